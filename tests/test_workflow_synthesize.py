"""`synthesize` workflow steps: datasets built atomically, reused when unchanged, foreign folders untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.data.manifest import load_manifest
from medseg.errors import ConfigError
from medseg.workflow import synthesize as synth_module
from medseg.workflow.schema import SynthesizeStep
from medseg.workflow.synthesize import STAMP_FILE, synthesize


def _step(out: Path, **changes) -> SynthesizeStep:
    return SynthesizeStep(**{"dataset": "ct", "cases": 2, "size": 64, "slices": 12, "seed": 3, "findings": "none",
                             "out": out, **changes})


def test_ct_dataset_is_made_once_and_remade_when_the_step_changes(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    assert synthesize(_step(out), progress=False) is True
    manifest = load_manifest(out / "manifest.yaml")
    assert [c.case_id for c in manifest.cases] == ["case_000", "case_001"]
    assert len(list((out / "case_000" / "ct").glob("*.dcm"))) == 12
    stamp = (out / STAMP_FILE).stat().st_mtime_ns
    assert synthesize(_step(out), progress=False) is False               # same parameters: reused as is
    assert (out / STAMP_FILE).stat().st_mtime_ns == stamp
    assert synthesize(_step(out, cases=3), progress=False) is True        # changed: rebuilt
    assert len(load_manifest(out / "manifest.yaml").cases) == 3
    assert not list(tmp_path.glob(".*partial"))


def test_cxr_dataset_has_labels_and_both_formats(tmp_path: Path) -> None:
    out = tmp_path / "cxr"
    synthesize(SynthesizeStep(dataset="cxr", cases=3, size=64, seed=1, out=out), progress=False)
    assert len(list((out / "images").glob("*.png"))) == 3 and len(list((out / "dicom").glob("*.dcm"))) == 3
    assert (out / "labels.csv").read_text().splitlines()[0].startswith("image,")


def test_a_folder_medseg_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not written by a synthesize step"):
        synthesize(_step(out), progress=False)
    assert (out / "precious.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="unknown finding"):
        synthesize(_step(tmp_path / "new", findings="nodule,tumour"), progress=False)


def test_an_interrupted_generation_leaves_the_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    out = tmp_path / "ct"
    synthesize(_step(out), progress=False)

    def crash(step, folder, kinds, progress):
        (folder / "case_000").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_module, "_generate", crash)
    with pytest.raises(KeyboardInterrupt):
        synthesize(_step(out, seed=4), progress=False)
    assert len(load_manifest(out / "manifest.yaml").cases) == 2          # the old one, whole
    assert not list(tmp_path.glob(".*partial"))
