"""Workflow files (`medseg run WORKFLOW.yaml`, `medseg validate WORKFLOW.yaml`): the pydantic schema, version 1.

    version: 1
    name: lung-lobes
    inputs: {path: /data/studies, series: {modalities: [CT], min_slices: 30}}
    steps:
      - lung_mask
      - segment_lobes: {model: ../runs/lobes/best.safetensors}
      - statistics
      - export: {nifti: true, dicom_seg: true, overlays: true, review_html: true}
    output: {dir: runs/lobes-batch}

Steps are a list; each item is a step name, or a one-key mapping `name: {options}`. Paths inside the file
are relative to the file (except `output.dir`, relative to the working directory, like training configs);
`${output}` in any value stands for the run folder (`output.dir`), so a workflow can keep the data it
synthesizes and the models it trains inside its run. Schema errors name the YAML line, the key and the
closest valid key.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.configfile import key_lines, read_mapping, validate_config
from medseg.errors import ConfigError
from medseg.workflow.layout import LAYOUT_FIELDS, check_layout

__all__ = ["PREPARATION_STEPS", "STEP_KINDS", "Workflow", "load_workflow"]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SeriesRules(_Strict):
    """Which DICOM series of a study is processed (medseg.io.series_selection.SelectionRules)."""

    modalities: list[str] | None = Field(["CT"], description="Accepted modalities; null accepts any.")
    min_slices: int = Field(20, ge=1, description="Series with fewer slices are skipped (localizers, key images).")
    max_obliquity_deg: float | None = Field(None, ge=0, le=90, description="Refuse series tilted more than this.")
    rank_by: list[Literal["axial", "most_slices", "thinnest", "original"]] = ["axial", "most_slices", "thinnest",
                                                                             "original"]
    gantry_tilt: Literal["resample", "error"] = "resample"
    uneven_spacing: Literal["error", "resample"] = "error"
    non_finite: Literal["air", "error"] = Field("air", description="NaN/inf voxels: replaced by air (-1024 HU) with "
                                                "a note and the QC flag non_finite_voxels, or the case fails.")
    max_voxels: int = Field(1024**3, ge=1, description="Refuse images larger than this (checked from headers, "
                                                      "before any pixel is read).")

    def selection_rules(self):
        from medseg.io.series_selection import SelectionRules

        return SelectionRules(modalities=tuple(m.upper() for m in self.modalities) if self.modalities else None,
                              min_slices=self.min_slices, max_obliquity_deg=self.max_obliquity_deg,
                              rank_by=tuple(self.rank_by))


class Inputs(_Strict):
    """What to process: a folder tree (optionally filtered by `glob`) or a dataset manifest."""

    path: Path | None = Field(None, description="Folder tree of studies (DICOM, NIfTI/NRRD/MHA, PNG/JPEG).")
    glob: str | None = Field(None, description="Only files matching this pattern under `path`, e.g. '**/*.dcm'.")
    manifest: Path | None = Field(None, description="Dataset manifest (data_manifest/ schema) instead of a tree.")
    splits: list[str] | None = Field(None, description="Manifest splits to process (default: all).")
    series: SeriesRules = Field(default_factory=SeriesRules)

    @model_validator(mode="after")
    def _one_source(self) -> Inputs:
        if (self.path is None) == (self.manifest is None):
            raise ValueError("give exactly one of inputs.path (a folder tree) or inputs.manifest")
        if self.glob is not None and self.path is None:
            raise ValueError("inputs.glob filters inputs.path; it has no meaning with a manifest")
        if self.splits is not None and self.manifest is None:
            raise ValueError("inputs.splits selects manifest splits; it needs inputs.manifest")
        return self


class LungMaskStep(_Strict):
    """Classical lung mask (1 right, 2 left), no model."""

    kind: Literal["lung_mask"] = "lung_mask"


class SegmentLobesStep(_Strict):
    """Five lobes with a trained checkpoint (`medseg segment`)."""

    kind: Literal["segment_lobes"] = "segment_lobes"
    model: Path
    tta: bool = False
    batch_size: int = Field(16, ge=1)


class ClassifyCxrStep(_Strict):
    """Findings on radiographs with a trained checkpoint (`medseg classify`); Grad-CAM for review pages."""

    kind: Literal["classify_cxr"] = "classify_cxr"
    model: Path
    batch_size: int = Field(32, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    cam: bool = True
    cam_classes: Literal["called", "top", "all"] = "called"


class StatisticsStep(_Strict):
    """Per-lobe volumes, shares, densities (LAA-950, PD15) and QC flags."""

    kind: Literal["statistics"] = "statistics"
    qc: Path | None = Field(None, description="QC ranges (default: configs/qc/lobes.yaml values).")


class AucReport(_Strict):
    labels: Path = Field(description="labels.csv (image, one 0/1 column per class) for the classified images.")
    operating_point: str = "calls"
    resamples: int = Field(2000, ge=100)


class ExportStep(_Strict):
    """What to write per case (and per batch)."""

    kind: Literal["export"] = "export"
    nifti: bool = True
    dicom_seg: bool = False
    overlays: bool = True
    review_html: bool = True
    auc_report: AucReport | None = None


class SynthesizeStep(_Strict):
    """Generate a synthetic dataset (`medseg synth ct|cxr`) into `out`, unless `out` already holds it."""

    kind: Literal["synthesize"] = "synthesize"
    dataset: Literal["ct", "cxr"] = Field(description="ct: chest CT phantoms (DICOM + lobe masks); cxr: PA "
                                                      "radiographs (PNG + DICOM DX + labels.csv).")
    cases: int = Field(ge=1, le=100_000)
    out: Path = Field(description="Dataset folder (manifest.yaml inside); replaced only if a synthesize step "
                                  "wrote it.")
    seed: int = 0
    size: int = Field(256, ge=64, le=1024, description="Matrix (ct) or image (cxr) size in pixels.")
    slices: int | None = Field(None, ge=8, description="ct: slices per case (default: from the sampled spacing).")
    findings: str = Field("random", description="ct: random | balanced | none | comma list of finding kinds.")
    workers: int = Field(1, ge=1, description="cxr: parallel processes.")


class TrainStep(_Strict):
    """Train a model from a training config (`medseg train`)."""

    kind: Literal["train"] = "train"
    config: Path
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides, as `medseg train --set`.")
    skip_if_exists: bool = Field(True, description="Skip when the run folder already holds best.safetensors.")


Step = Annotated[LungMaskStep | SegmentLobesStep | ClassifyCxrStep | StatisticsStep | ExportStep | SynthesizeStep
                 | TrainStep, Field(discriminator="kind")]
STEP_KINDS = ("synthesize", "train", "lung_mask", "segment_lobes", "classify_cxr", "statistics", "export")
PREPARATION_STEPS = ("synthesize", "train")
"""Steps that run once before any case (in file order); they may be repeated."""


class Executor(_Strict):
    """Where cases run: `local` (this process, reading ahead while computing) or `ray` (Ray actors, each
    loading the models once; a Ray cluster at `address`, or a local Ray started for the run)."""

    kind: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1, description="local: reader threads running ahead; ray: actors.")
    address: str | None = Field(None, description="ray: cluster address, e.g. 'auto' or 'ray://head:10001' "
                                                  "(default: start a local Ray for this run).")
    cpus_per_worker: float = Field(1.0, gt=0, description="ray: CPUs each actor reserves (and uses for torch).")
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs each actor reserves (0.5: two per GPU).")

    @model_validator(mode="after")
    def _ray_only(self) -> Executor:
        if self.kind == "local" and (self.address is not None or self.gpus_per_worker or self.cpus_per_worker != 1):
            raise ValueError("address, cpus_per_worker and gpus_per_worker are Ray settings; set executor.kind: ray")
        return self


class Output(_Strict):
    dir: Path = Field(description="Run folder: one sub-folder per case, run.json, summary, review index.")
    layout: str = Field("{case_id}", description=f"Case folder name from {', '.join(LAYOUT_FIELDS)}, plain fields "
                        "only; '/' makes folder levels, e.g. '{patient_id}/{study_uid}'. Values from data are "
                        "made safe path components (a hash is appended when they had to be changed).")
    on_collision: Literal["suffix", "error"] = Field(
        "suffix", description="Two cases resolving to one folder: 'suffix' gives each a hash of its source "
                              "(reported), 'error' refuses the run naming both.")

    @field_validator("layout")
    @classmethod
    def _layout_fields(cls, value: str) -> str:
        check_layout(value)
        return value


class Workflow(_Strict):
    """A workflow file, schema version 1."""

    version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    inputs: Inputs | None = None
    steps: list[Step] = Field(min_length=1)
    output: Output
    executor: Executor = Field(default_factory=Executor)
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1 ...")
    seed: int = 0
    fail_on_error: bool = Field(False, description="Exit non-zero when any case fails (the batch still runs).")

    @field_validator("steps", mode="before")
    @classmethod
    def _step_items(cls, value: Any) -> Any:
        """`- lung_mask` and `- segment_lobes: {model: x}` -> `{"kind": ..., **options}`."""
        if not isinstance(value, list):
            return value
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                item = {item: {}}
            if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
                (name, options), = item.items()
                if name not in STEP_KINDS:
                    close = difflib.get_close_matches(str(name), STEP_KINDS, n=1, cutoff=0.6)
                    hint = f"did you mean '{close[0]}'?" if close else f"steps are {', '.join(STEP_KINDS)}"
                    raise ValueError(f"steps[{index}]: unknown step '{name}' ({hint})")
                if options is not None and not isinstance(options, dict):
                    raise ValueError(f"steps[{index}]: options of '{name}' must be a mapping, got {options!r:.40}")
                item = {"kind": name, **(options or {})}
            items.append(item)
        return items

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @model_validator(mode="after")
    def _step_order(self) -> Workflow:
        kinds = [step.kind for step in self.steps]
        if any(kind not in PREPARATION_STEPS for kind in kinds) and self.inputs is None:
            raise ValueError("inputs: required for processing steps (only synthesize/train workflows may omit it)")
        for index, step in enumerate(self.steps):
            before = kinds[:index]
            if step.kind in PREPARATION_STEPS and any(kind not in PREPARATION_STEPS for kind in before):
                raise ValueError(f"steps[{index}] {step.kind} runs once before any case: list it before the "
                                 "processing steps")
            if step.kind == "statistics" and not {"lung_mask", "segment_lobes"} & set(before):
                raise ValueError(f"steps[{index}] statistics needs lung_mask or segment_lobes before it")
            if step.kind == "export":
                if step.dicom_seg and not {"lung_mask", "segment_lobes"} & set(before):
                    raise ValueError(f"steps[{index}] export.dicom_seg needs lung_mask or segment_lobes before it")
                if step.auc_report is not None and "classify_cxr" not in before:
                    raise ValueError(f"steps[{index}] export.auc_report needs classify_cxr before it")
        duplicates = sorted({kind for kind in kinds if kinds.count(kind) > 1 and kind not in PREPARATION_STEPS})
        if duplicates:
            raise ValueError(f"steps {duplicates} appear more than once")
        return self

    def step(self, kind: str) -> Any | None:
        """The step of this kind, or None."""
        return next((step for step in self.steps if step.kind == kind), None)


OUTPUT_PLACEHOLDER = "${output}"


def _absolute(base: Path, value: str) -> str:
    if value.startswith(OUTPUT_PLACEHOLDER):   # made absolute when the placeholder is expanded
        return value
    return os.path.normpath(base / os.path.expanduser(value))


def _expand_output(value: Any, output_dir: str) -> Any:
    """`${output}` -> the absolute run folder, in every string of a nested mapping/list."""
    if isinstance(value, str):
        if OUTPUT_PLACEHOLDER not in value:
            return value
        return os.path.normpath(value.replace(OUTPUT_PLACEHOLDER, output_dir))
    if isinstance(value, dict):
        return {key: _expand_output(item, output_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_output(item, output_dir) for item in value]
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the file's relative paths absolute against its folder (output.dir stays relative to the CWD)."""
    inputs = data.get("inputs")
    if isinstance(inputs, dict):
        for key in ("path", "manifest"):
            if isinstance(inputs.get(key), str):
                inputs[key] = _absolute(base, inputs[key])
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    for item in steps:
        options = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else item
        if not isinstance(options, dict):
            continue
        for key in ("model", "config", "qc", "out"):
            if isinstance(options.get(key), str):
                options[key] = _absolute(base, options[key])
        report = options.get("auc_report")
        if isinstance(report, dict) and isinstance(report.get("labels"), str):
            report["labels"] = _absolute(base, report["labels"])


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Dotted keys (`inputs.path`, `steps.1.tta`, `executor.workers`) set before validation."""
    for dotted, value in overrides.items():
        target: Any = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if isinstance(target, list):
                target = _list_item(target, part, dotted)
                continue
            target = target.setdefault(part, {})
        if isinstance(target, list):
            raise ConfigError(f"--set {dotted}: cannot replace a whole step; set one of its options")
        target[leaf] = value


def _list_item(items: list[Any], part: str, dotted: str) -> Any:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"--set {dotted}: '{part}' is not a step index (0..{len(items) - 1})")
    item = items[int(part)]
    if isinstance(item, str):
        item = items[int(part)] = {item: {}}
    if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
        name = next(iter(item))
        if item[name] is None:
            item[name] = {}
        return item[name]
    return item


def load_workflow(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Workflow:
    """Read and validate a workflow; `overrides` are dotted keys whose paths are relative to the CWD."""
    path = Path(path)
    data = read_mapping(path, "workflow")
    _resolve_paths(data, path.resolve().parent)
    if overrides:
        _apply_overrides(data, overrides)
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("dir"), str):
        if OUTPUT_PLACEHOLDER in output["dir"]:
            raise ConfigError(f"output.dir cannot contain {OUTPUT_PLACEHOLDER}", path)
        expanded = os.path.abspath(os.path.expanduser(output["dir"]))
        data = {key: value if key == "output" else _expand_output(value, expanded) for key, value in data.items()}
    return validate_config(Workflow, data, path, key_lines(path))
