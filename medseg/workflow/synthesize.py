"""`synthesize` steps of a workflow: the same generators as `medseg synth ct|cxr`, run once and reused.

A dataset is built in a hidden sibling folder and renamed into place when complete, with a stamp file
recording the step's parameters; a rerun with the same parameters reuses it. A folder medseg did not write
is never replaced.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medseg.errors import ConfigError
from medseg.workflow.schema import SynthesizeStep, Workflow

__all__ = ["STAMP_FILE", "run_synthesize_steps", "synthesize"]

log = logging.getLogger(__name__)

STAMP_FILE = ".medseg_synthesize.json"


def _stamp(step: SynthesizeStep) -> dict:
    from medseg import __version__

    return {"medseg": __version__, **step.model_dump(mode="json", exclude={"out", "workers"})}


def _is_current(out: Path, stamp: dict) -> bool:
    try:
        return json.loads((out / STAMP_FILE).read_text()) == stamp and (out / "manifest.yaml").is_file()
    except (OSError, ValueError):
        return False


def _generate(step: SynthesizeStep, folder: Path, kinds: list[str] | str | None, progress: bool) -> None:
    from medseg.progress import eta_progress

    with eta_progress(enabled=progress) as bar:
        task = bar.add_task(f"synthesize {step.dataset} -> {step.out.name}", total=step.cases, info="")

        def advance(*_args) -> None:
            bar.update(task, advance=1)

        if step.dataset == "ct":
            from medseg.data.phantom.ct_case import synth_ct_dataset

            synth_ct_dataset(folder, step.cases, step.seed, size=step.size, slices=step.slices, findings=kinds,
                             on_case=advance)
        else:
            from medseg.data.radiograph.dataset import synthesize_cxr_dataset

            synthesize_cxr_dataset(folder, step.cases, step.seed, size=step.size, workers=step.workers,
                                   progress=advance, command=f"medseg run (synthesize cxr, seed {step.seed})")


def _finding_kinds(value: str) -> list[str] | str | None:
    """`medseg.data.phantom.findings.parse_finding_kinds`, its error as a workflow config error."""
    from medseg.data.phantom.findings import parse_finding_kinds

    try:
        return parse_finding_kinds(value)
    except ValueError as error:
        raise ConfigError(f"synthesize.findings: {error}") from None


def synthesize(step: SynthesizeStep, *, progress: bool = True) -> bool:
    """Make `step.out` hold the dataset; returns False when an identical one was already there."""
    out = Path(step.out)
    stamp = _stamp(step)
    if _is_current(out, stamp):
        log.info("synthesize %s: %s is up to date, reused", step.dataset, out)
        return False
    if out.exists() and not (out / STAMP_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"synthesize.out {out} exists and was not written by a synthesize step; choose an empty "
                          "or new folder (medseg never replaces data it did not make)")
    kinds = _finding_kinds(step.findings) if step.dataset == "ct" else None
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    try:
        _generate(step, work, kinds, progress)
        (work / STAMP_FILE).write_text(json.dumps(stamp, indent=2))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return True


def run_synthesize_steps(workflow: Workflow, *, progress: bool = True) -> list[Path]:
    """Run every synthesize step in file order; returns their dataset folders."""
    folders = []
    for step in workflow.steps:
        if step.kind == "synthesize":
            synthesize(step, progress=progress)
            folders.append(Path(step.out))
    return folders
