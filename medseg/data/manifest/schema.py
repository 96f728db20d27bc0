"""Dataset manifests: the schema (version 1), loading/saving, checksums, splits and validation.

A manifest is a YAML or JSON file listing a dataset's cases (image and label paths relative to the
manifest's folder), patient-level splits, the label map, sha256 checksums and provenance.
`validate_manifest` checks a manifest against the files it references.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from medseg.configfile import ConfigSchemaError, format_validation_error, read_mapping
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import write_atomically
from medseg.jsonable import to_json_types

__all__ = [
    "LOBE_LABELS",
    "MANIFEST_SUFFIXES",
    "SCHEMA_VERSION",
    "CaseRecord",
    "Manifest",
    "ManifestSchemaError",
    "Problem",
    "Provenance",
    "ValidationReport",
    "assign_patient_splits",
    "build_case",
    "checksum_paths",
    "files_under",
    "load_manifest",
    "manifest_json_schema",
    "progress",
    "resolve_path",
    "save_manifest",
    "sha256_file",
    "validate_manifest",
    "write_json_schema",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test"]
Task = Literal["segmentation", "classification"]

LOBE_LABELS: dict[int, str] = {
    0: "background",
    1: "left_upper_lobe",
    2: "left_lower_lobe",
    3: "right_upper_lobe",
    4: "right_middle_lobe",
    5: "right_lower_lobe",
}
"""Lobe label map (lungmask convention), the same as `configs/labels/lobes.yaml`."""

PROGRESS_MIN_ITEMS = 50
"""Progress bars appear only for at least this many items (and only on a terminal)."""

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


# --------------------------------------------------------------------------------------------- schema


def _label_value(value: Any) -> str | int | None:
    """A case's label entry: a file path (segmentation) or 0/1/null (classification)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected a file path (segmentation) or 0, 1 or null (classification), got {value!r}")


LabelValue = Annotated[
    str | int | None,
    PlainValidator(_label_value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(_Strict):
    """Where a dataset came from and what wrote its manifest."""

    source: str | None = Field(None, description="Source dataset name (and version), e.g. 'TotalSegmentator v2'.")
    generator: str | None = Field(None, description="Generator or importer that wrote the manifest.")
    generator_version: str | None = Field(None, description="Version of the generator (e.g. medseg's version).")
    seed: int | None = Field(None, description="Random seed (synthetic data, split assignment).")
    root: str | None = Field(None, description="Folder the dataset was imported from.")
    command: str | None = Field(None, description="Command line that wrote the manifest.")
    license: str | None = Field(None, description="Licence or data-use terms of the source.")
    url: str | None = Field(None, description="Where the source dataset can be obtained.")
    notes: str | None = Field(None, description="Free text: policies applied, caveats.")


class CaseRecord(_Strict):
    """One case: an image, its labels, its patient and split, and checksums of its files."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # `patient_id: 12345` is an id

    case_id: str = Field(min_length=1, description="Unique within the manifest.")
    patient_id: str = Field(min_length=1, description="Splits are patient-level: one patient, one split.")
    split: Split | None = Field(None, description="train, val, test, or null (unassigned).")
    image: str = Field(min_length=1, description="Image file or DICOM folder, relative to the manifest's folder.")
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Segmentation: name -> label file path. Classification: class -> 1, 0 or null (unknown/ignored).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form per-case metadata.")
    checksums: dict[str, Sha256Hex] = Field(
        default_factory=dict,
        description="Path (as written in this manifest; for a DICOM folder, each file in it) -> sha256 hex digest.",
    )


_LABEL_MAP_SCHEMA = {"anyOf": [
    {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
     "additionalProperties": {"type": "string", "minLength": 1}},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest(_Strict):
    """A dataset manifest (schema version 1)."""

    version: Literal[1] = Field(SCHEMA_VERSION, description="Manifest schema version.")
    name: str = Field(min_length=1, description="Dataset name.")
    task: Task
    created: str = Field(default_factory=_now, description="ISO 8601 timestamp.")
    provenance: Provenance = Field(default_factory=Provenance)
    label_map: Annotated[dict[int, str] | list[str], WithJsonSchema(_LABEL_MAP_SCHEMA)] = Field(
        description="Segmentation: label value -> name. Classification: list of class names (multi-label)."
    )
    cases: list[CaseRecord] = Field(default_factory=list)

    @field_validator("created")
    @classmethod
    def _iso_timestamp(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
        return value

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_for_task(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if isinstance(value, Mapping):
            if task == "classification":
                raise ValueError("a classification label_map is a list of class names")
            return _int_label_map(value)
        if isinstance(value, list):
            if task == "segmentation":
                raise ValueError("a segmentation label_map maps label values to names, e.g. {0: background, 1: ...}")
            if not all(isinstance(name, str) and name for name in value):
                raise ValueError("class names must be non-empty strings")
            duplicates = sorted({name for name in value if value.count(name) > 1})
            if duplicates:
                raise ValueError(f"duplicate class names: {', '.join(duplicates)}")
            return value
        raise ValueError("expected a mapping (segmentation) or a list of class names (classification)")

    @property
    def class_names(self) -> list[str]:
        """Classification classes, or segmentation label names in label order."""
        if isinstance(self.label_map, list):
            return list(self.label_map)
        return [self.label_map[key] for key in sorted(self.label_map)]

    def split_counts(self) -> dict[str, int]:
        """Number of cases per split (`none` for unassigned), in train/val/test order."""
        counts = {split: 0 for split in SPLITS}
        for case in self.cases:
            key = case.split or "none"
            counts[key] = counts.get(key, 0) + 1
        return {key: n for key, n in counts.items() if n or key in SPLITS}


def _int_label_map(value: Mapping[Any, Any]) -> dict[int, str]:
    result: dict[int, str] = {}
    for key, name in value.items():
        try:
            number = int(key) if not isinstance(key, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0 or str(key).strip() != str(number):
            raise ValueError(f"label values must be non-negative integers, got {key!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"label {number}: the name must be a non-empty string")
        result[number] = name
    names = list(result.values())
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate label names: {', '.join(duplicates)}")
    return result


class ManifestSchemaError(ConfigSchemaError):
    """A manifest does not match the schema; `errors` holds one line per problem."""


# ------------------------------------------------------------------------------------------ load/save


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"a manifest must end in {', '.join(MANIFEST_SUFFIXES)}", path)
    return suffix


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and schema-check a manifest (YAML or JSON by suffix); errors name the file and the key."""
    path = Path(path)
    _check_suffix(path)
    data = read_mapping(path, "manifest")
    if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ConfigError(f"unsupported manifest version {data.get('version')!r} (this medseg reads version "
                          f"{SCHEMA_VERSION})", path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestSchemaError([format_validation_error(error, Manifest) for error in exc.errors()],
                                  path) from None


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """Plain data in schema order; unset provenance fields left out, `null` labels and splits kept.

    Metadata given as numpy scalars/arrays, tuples or paths becomes plain numbers, lists and strings.
    """
    data = manifest.model_dump(mode="python")
    data["provenance"] = {key: value for key, value in data["provenance"].items() if value is not None}
    for case in data["cases"]:
        case["metadata"] = to_json_types(case["metadata"])
    return data


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write `manifest` atomically as YAML or JSON (by suffix)."""
    import yaml

    path = Path(path)
    suffix = _check_suffix(path)
    if suffix == ".json":
        text = json.dumps(manifest_to_dict(manifest), indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(manifest_to_dict(manifest), sort_keys=False, allow_unicode=True, width=120)
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest model (committed as data_manifest/schema/manifest.schema.json)."""
    schema = Manifest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def write_json_schema(path: str | os.PathLike[str]) -> Path:
    """Write `manifest_json_schema()` to `path` (atomically)."""
    text = json.dumps(manifest_json_schema(), indent=2) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------- checksums and helpers


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_path(base: str | os.PathLike[str], relative: str) -> Path:
    """A manifest path resolved against the manifest's folder (absolute paths stay as they are)."""
    path = Path(relative)
    return path if path.is_absolute() else Path(base) / path


def _relative(root: Path, path: str | os.PathLike[str]) -> str:
    """`path` as written in a manifest at `root`: relative (POSIX separators) unless on another drive."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_posix()


def files_under(root: str | os.PathLike[str], relative: str) -> list[str]:
    """Manifest paths of the files that `relative` stands for: itself, or every file in a folder (sorted)."""
    target = resolve_path(root, relative)
    if not target.is_dir():
        return [relative]
    found = []
    for folder, subfolders, names in os.walk(target):
        subfolders.sort()
        for name in sorted(names):
            inner = Path(folder, name).relative_to(target).as_posix()
            found.append(f"{relative.rstrip('/')}/{inner}")
    return found


@contextmanager
def progress(total: int, description: str, *, min_items: int = PROGRESS_MIN_ITEMS) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr for long jobs; yields `advance()`.

    Shown only on a terminal and for at least `min_items` items, so logs and tests stay clean.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if total < min_items or not console.is_terminal:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def checksum_paths(root: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]], *,
                   show_progress: bool = True) -> dict[str, str]:
    """sha256 of each path (relative to `root`, or absolute); a folder contributes each file in it.

    Keys are the paths as they are written in a manifest at `root` (a folder's files as `folder/file`).
    `show_progress=False` when the caller runs its own progress bar (rich shows one at a time).
    """
    root = Path(root)
    files: list[str] = []
    for path in paths:
        for name in files_under(root, _relative(root, path)):
            if name not in files:
                files.append(name)
    checksums: dict[str, str] = {}
    with progress(len(files) if show_progress else 0, "hashing") as advance:
        for name in files:
            target = resolve_path(root, name)
            if not target.is_file():
                raise InputError("no such file", target)
            checksums[name] = sha256_file(target)
            advance()
    return checksums


def build_case(
    root: str | os.PathLike[str],
    case_id: str,
    *,
    image: str | os.PathLike[str],
    labels: Mapping[str, str | os.PathLike[str] | int | None] | None = None,
    patient_id: str | None = None,
    split: Split | None = None,
    metadata: Mapping[str, Any] | None = None,
    checksums: bool = True,
) -> CaseRecord:
    """A `CaseRecord` for files under `root` (the manifest's folder), with their checksums.

    `image` and path-valued `labels` may be relative to `root` or absolute; they are stored relative to
    `root`. Integer/None label values (classification) are kept as they are. `patient_id` defaults to
    `case_id`. A DICOM-folder image is checksummed file by file.
    """
    root = Path(root)
    image_path = _relative(root, image)
    label_entries: dict[str, str | int | None] = {}
    files = [image_path]
    for name, value in (labels or {}).items():
        if isinstance(value, (str, os.PathLike)):
            label_entries[name] = _relative(root, value)
            files.append(label_entries[name])  # type: ignore[arg-type]
        else:
            label_entries[name] = value
    return CaseRecord(
        case_id=case_id,
        patient_id=patient_id or case_id,
        split=split,
        image=image_path,
        labels=label_entries,
        metadata=dict(metadata or {}),
        checksums=checksum_paths(root, files) if checksums else {},
    )


def assign_patient_splits(
    patient_ids: Iterable[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    splits: Sequence[Split] = SPLITS,
) -> dict[str, Split]:
    """Deterministic patient-level split: patient id -> split.

    Patients are ordered by sha256(seed, id), so the result does not depend on input order or platform,
    and each split gets its share by largest remainders (at least one patient for a non-zero fraction
    when there are enough patients).
    """
    if len(fractions) != len(splits):
        raise ConfigError(f"need one fraction per split ({', '.join(splits)}), got {list(fractions)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    unique = sorted(set(map(str, patient_ids)))
    order = sorted(unique, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    counts = _split_counts(len(order), fractions)
    result: dict[str, Split] = {}
    start = 0
    for split, count in zip(splits, counts, strict=True):
        for pid in order[start:start + count]:
            result[pid] = split
        start += count
    return result


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    for index in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[:n - sum(counts)]:
        counts[index] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for index in wanted:
            if counts[index] == 0:
                donor = max(range(len(counts)), key=lambda i: counts[i])
                counts[donor] -= 1
                counts[index] += 1
    return counts


# ------------------------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest's data: which case, which path, what."""

    kind: str
    message: str
    case_id: str | None = None
    path: str | None = None


@dataclass
class ValidationReport:
    """The result of `validate_manifest`: problems found and what was checked."""

    manifest_path: Path
    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    checksums_verified: int = 0
    label_files_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, case_id: str | None = None, path: str | None = None) -> None:
        self.problems.append(Problem(kind, message, case_id, path))

    def summary(self) -> str:
        splits = ", ".join(f"{key} {n}" for key, n in self.manifest.split_counts().items())
        checked = (f"{self.files_checked} files present, {self.checksums_verified} checksums verified, "
                   f"{self.label_files_read} label files read")
        head = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{head}: {len(self.manifest.cases)} cases ({splits}); {checked}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest_path),
            "ok": self.ok,
            "name": self.manifest.name,
            "task": self.manifest.task,
            "cases": len(self.manifest.cases),
            "splits": self.manifest.split_counts(),
            "files_checked": self.files_checked,
            "checksums_verified": self.checksums_verified,
            "label_files_read": self.label_files_read,
            "problems": [problem.__dict__ for problem in self.problems],
        }


def validate_manifest(
    path: str | os.PathLike[str], check_checksums: bool = True, check_label_values: bool = True
) -> ValidationReport:
    """Check a manifest against its files.

    Schema errors raise `ConfigError` (`ManifestSchemaError`). Everything else becomes a `Problem` in the
    report: duplicate case ids, a patient in several splits, missing files, sha256 mismatches, files added
    to a checksummed DICOM folder, segmentation label values outside the label map (and label grids that
    differ from a NIfTI image's), classification labels that are not 0/1/null or not in the label map.
    """
    path = Path(path)
    manifest = load_manifest(path)
    report = ValidationReport(manifest_path=path, manifest=manifest)
    base = path.parent
    _check_case_ids(manifest, report)
    _check_patient_leakage(manifest, report)
    hashes: list[tuple[str, str, str]] = []
    for case in manifest.cases:
        _check_case_files(case, manifest, base, report, hashes)
    if check_checksums:
        _verify_checksums(hashes, base, report)
    if check_label_values and manifest.task == "segmentation":
        _check_segmentation_values(manifest, base, report)
    return report


def _check_case_ids(manifest: Manifest, report: ValidationReport) -> None:
    seen: dict[str, int] = defaultdict(int)
    for case in manifest.cases:
        seen[case.case_id] += 1
    for case_id, count in seen.items():
        if count > 1:
            report.add("duplicate_case", f"case id used by {count} cases", case_id)


def _check_patient_leakage(manifest: Manifest, report: ValidationReport) -> None:
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case in manifest.cases:
        if case.split:
            by_patient[case.patient_id][case.split].append(case.case_id)
    for patient, splits in sorted(by_patient.items()):
        if len(splits) > 1:
            where = "; ".join(f"{split}: {', '.join(cases[:3])}{' ...' if len(cases) > 3 else ''}"
                              for split, cases in sorted(splits.items(), key=lambda item: SPLITS.index(item[0])))
            report.add("patient_leakage", f"patient '{patient}' is in {len(splits)} splits ({where})")


def _check_case_files(case: CaseRecord, manifest: Manifest, base: Path, report: ValidationReport,
                      hashes: list[tuple[str, str, str]]) -> None:
    referenced = [case.image]
    if not resolve_path(base, case.image).exists():
        report.add("missing", "image not found", case.case_id, case.image)
    for name, value in case.labels.items():
        if manifest.task == "segmentation":
            if not isinstance(value, str):
                report.add("label", f"label '{name}' must be a file path, got {value!r}", case.case_id)
                continue
            referenced.append(value)
            if not resolve_path(base, value).exists():
                report.add("missing", f"label file '{name}' not found", case.case_id, value)
        else:
            if name not in manifest.label_map:
                close = difflib.get_close_matches(name, manifest.class_names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                report.add("label", f"class '{name}' is not in the label map{hint}", case.case_id)
            if value not in (0, 1, None):
                report.add("label", f"class '{name}' must be 0, 1 or null, got {value!r}", case.case_id)
    present = [item for item in referenced if resolve_path(base, item).exists()]
    report.files_checked += sum(len(files_under(base, item)) for item in present)
    for key, digest in case.checksums.items():
        if resolve_path(base, key).is_file():
            hashes.append((case.case_id, key, digest))
        else:
            report.add("missing", "checksummed file not found", case.case_id, key)
    _check_unlisted_files(case, base, report)


def _check_unlisted_files(case: CaseRecord, base: Path, report: ValidationReport) -> None:
    """Files added to a checksummed image folder (e.g. an extra DICOM slice) after the manifest was written."""
    folder = resolve_path(base, case.image)
    prefix = case.image.rstrip("/") + "/"
    if not folder.is_dir() or not any(key.startswith(prefix) for key in case.checksums):
        return
    for name in files_under(base, case.image):
        if name not in case.checksums:
            report.add("unlisted", "file in the image folder has no checksum (added after the manifest?)",
                       case.case_id, name)


def _verify_checksums(hashes: list[tuple[str, str, str]], base: Path, report: ValidationReport) -> None:
    with progress(len(hashes), "verifying checksums") as advance:
        for case_id, key, expected in hashes:
            actual = sha256_file(resolve_path(base, key))
            if actual != expected:
                report.add("checksum", f"sha256 mismatch: manifest {expected[:12]}..., file {actual[:12]}...",
                           case_id, key)
            else:
                report.checksums_verified += 1
            advance()


def _check_segmentation_values(manifest: Manifest, base: Path, report: ValidationReport) -> None:
    allowed = set(manifest.label_map)  # type: ignore[arg-type]
    jobs = [(case, value) for case in manifest.cases for value in case.labels.values()
            if isinstance(value, str) and value.lower().endswith(_VOLUME_SUFFIXES)
            and resolve_path(base, value).is_file()]
    with progress(len(jobs), "reading label files") as advance:
        for case, value in jobs:
            _check_label_file(case, value, allowed, base, report)
            advance()


def _check_label_file(case: CaseRecord, value: str, allowed: set[int], base: Path, report: ValidationReport) -> None:
    try:
        array, affine = _read_label_volume(resolve_path(base, value))
    except Exception as exc:  # any unreadable label file is a problem to report, not a crash
        report.add("label", f"cannot read label file ({exc})", case.case_id, value)
        return
    report.label_files_read += 1
    values = np.unique(array)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        report.add("label_value", "label file holds non-integer values", case.case_id, value)
        return
    outside = sorted(int(v) for v in values if int(v) not in allowed)
    if outside:
        shown = ", ".join(map(str, outside[:10])) + (" ..." if len(outside) > 10 else "")
        report.add("label_value", f"label value(s) {shown} not in the label map ({_describe_keys(allowed)})",
                   case.case_id, value)
    _check_grid(case, value, array.shape, affine, base, report)


def _describe_keys(keys: set[int]) -> str:
    ordered = sorted(keys)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _read_label_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(path)
        return np.asanyarray(image.dataobj), image.affine
    from medseg.io import read_itk_image

    volume = read_itk_image(path)
    return volume.array, volume.affine


def _check_grid(case: CaseRecord, value: str, shape: tuple[int, ...], affine: np.ndarray, base: Path,
                report: ValidationReport) -> None:
    """A label volume must share a NIfTI image's grid (checked from the image header only)."""
    image_path = resolve_path(base, case.image)
    if not image_path.name.lower().endswith((".nii", ".nii.gz")) or not image_path.is_file():
        return
    import nibabel as nib

    try:
        image = nib.load(image_path)
    except Exception:  # an unreadable image is reported by whoever reads it; skip the grid check
        return
    if tuple(image.shape[:3]) != tuple(shape[:3]):
        report.add("label_grid", f"label shape {tuple(shape[:3])} differs from image shape {tuple(image.shape[:3])}",
                   case.case_id, value)
    elif not np.allclose(image.affine, affine, atol=1e-3):
        report.add("label_grid", "label affine differs from the image's (not on the image grid)", case.case_id, value)
