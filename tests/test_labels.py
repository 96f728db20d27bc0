"""The label registry: codes checked against DICOM's vocabulary, mirror logic, and a model whose labels are in
another order getting SEG codes, statistics names and overlay colours from its own card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from medseg.errors import ConfigError
from medseg.labels import LABELS_DIR, find_label, from_names, label_map, label_map_names

# A lobe model trained with this (non-lungmask) order: every consumer must follow it, not 1 LUL .. 5 RLL.
REORDERED = {0: "background", 1: "right_lower_lobe", 2: "left_upper_lobe", 3: "right_middle_lobe",
             4: "left_lower_lobe", 5: "right_upper_lobe"}
RIGHT_WINNER, LEFT_WINNER = 1, 4          # the constant model below: RLL on the right lung, LLL on the left


def _dicom_concepts() -> dict[tuple[str, str], dict[str, set[int]]]:
    """(scheme, code) -> {meaning: CIDs} from pydicom's shipped DICOM PS3.16 vocabulary."""
    from pydicom.sr._concepts_dict import concepts

    found: dict[tuple[str, str], dict[str, set[int]]] = {}
    for scheme, keywords in concepts.items():
        for entries in keywords.values():
            for code, (meaning, cids) in entries.items():
                found.setdefault((scheme, code), {}).setdefault(meaning, set()).update(cids)
    return found


def test_every_code_is_in_the_dicom_vocabulary_with_its_meaning_and_context_group() -> None:
    vocabulary = _dicom_concepts()
    checked = 0
    for name in label_map_names():
        for label in label_map(name).foreground:
            for role, coded, groups in (("category", label.category, {7150}), ("type", label.type, {7151, 6170}),
                                        ("laterality", label.laterality_code, {244}),
                                        ("region", label.region, {4})):
                if coded is None:
                    assert role == "region", f"{name}/{label.name} has no {role} code"
                    continue
                assert (coded.scheme, coded.value) in vocabulary, f"{name}/{label.name} {role} {coded} unknown"
                meanings = vocabulary[(coded.scheme, coded.value)]
                assert coded.meaning in meanings, f"{name}/{label.name} {role}: {coded.meaning!r} not in {meanings}"
                cids = meanings[coded.meaning]
                assert cids & groups, f"{name}/{label.name} {role} {coded.value} is in none of CIDs {groups}"
                checked += 1
    assert checked >= 7 * 3 + 5   # 5 lobes + 2 lungs x (category, type, laterality) + 5 lobe regions


def test_laterality_specific_codes_chosen_by_hand_earlier_are_not_in_the_vocabulary() -> None:
    """Why the registry codes lobes as CID 6170 type + CID 244 laterality: the former hand-picked codes for
    the right upper / lower lobe (and left lower lobe, the lungs) are absent from DICOM's vocabulary."""
    vocabulary = _dicom_concepts()
    for code in ("42400003", "266005", "41224006", "3341006", "44029006"):
        assert ("SCT", code) not in vocabulary
    types = {(label.type.value, label.laterality) for label in label_map("lobes").foreground}  # type: ignore[union-attr]
    assert len(types) == 5   # (type, laterality) still tells the five lobes apart


def test_registry_is_the_lungmask_convention_with_totalsegmentator_names() -> None:
    lobes = label_map("lobes")
    assert lobes.short_names() == {1: "LUL", 2: "LLL", 3: "RUL", 4: "RML", 5: "RLL"}
    assert {v: label.totalsegmentator for v, label in ((label.value, label) for label in lobes.foreground)} == {
        1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "lung_upper_lobe_right",
        4: "lung_middle_lobe_right", 5: "lung_lower_lobe_right"}
    assert label_map("lungs").names() == {1: "right_lung", 2: "left_lung"}
    assert lobes.side("right") == [3, 4, 5] and lobes.side("left") == [1, 2]
    assert lobes.parts() == {"right_lung": ("RUL", "RML", "RLL"), "left_lung": ("LUL", "LLL")}
    assert len({label.colour for label in lobes.foreground}) == 5
    assert find_label("Lung Upper Lobe Right").name == "right_upper_lobe"  # type: ignore[union-attr]
    assert find_label("spleen") is None


def test_mirror_swaps_and_flip_tta_groups() -> None:
    lobes = label_map("lobes")
    assert lobes.swap() == {1: 3, 3: 1, 2: 5, 5: 2}                    # RML has no exact left counterpart
    assert label_map("lungs").swap() == {1: 2, 2: 1}
    groups, mirror = lobes.flip_groups(6)
    assert groups[3] == groups[4] != groups[5]                          # RUL+RML pooled against LUL
    assert mirror[groups[1]] == groups[3] and mirror[groups[3]] == groups[1]
    assert mirror[groups[2]] == groups[5] and mirror[groups[0]] == groups[0]
    reordered = from_names(REORDERED)
    groups, mirror = reordered.flip_groups(6)
    assert groups[5] == groups[3] and mirror[groups[5]] == groups[2] and mirror[groups[1]] == groups[4]
    assert reordered.swap() == {1: 4, 4: 1, 2: 5, 5: 2}
    with pytest.raises(ConfigError, match="no mirror partner"):
        from_names({0: "background", 1: "right_upper_lobe", 2: "right_lower_lobe"}).flip_groups(3)


def test_label_files_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.labels as labels

    broken = yaml.safe_load((LABELS_DIR / "lungs.yaml").read_text())
    broken["labels"][1]["mirror"] = "left_lugn"
    (tmp_path / "lungs.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setattr(labels, "LABELS_DIR", tmp_path)
    labels._registry.cache_clear()
    try:
        with pytest.raises(ConfigError, match="left_lugn") as error:
            labels.label_map("lungs")
        assert "lungs.yaml" in str(error.value)
    finally:
        monkeypatch.undo()
        labels._registry.cache_clear()


def _constant_lobe_model(path: Path) -> Path:
    """A real checkpoint (unet_resnet18) with the REORDERED card whose head predicts constant logits."""
    import torch

    from medseg.models import ModelCard, create_model, save_checkpoint

    model = create_model("unet_resnet18", in_channels=1, out_channels=6, spatial_dims=2,
                         decoder_channels=[16, 8, 8, 8, 8])
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        # background p ~ 0.7: lobes only inside the classical lung mask; right: 1 (RLL) wins, left: 4 (LLL)
        head.bias.copy_(torch.tensor([4.4, 3.0, 1.0, 0.0, 2.0, 1.5]))
    preprocessing = {"modality": "ct", "windows": [{"center": -600, "width": 1500}], "stack": 1,
                     "spacing": [4.0, 4.0, 5.0], "roi_margin_mm": 8}
    card = ModelCard.from_model(model, task="lobes", labels=REORDERED, preprocessing=preprocessing,
                                spacing=[4.0, 4.0, 5.0])
    return save_checkpoint(path, model, card)


@pytest.mark.slow
def test_reordered_model_labels_drive_seg_codes_statistics_and_overlay_colours(tmp_path: Path) -> None:
    from PIL import Image

    from medseg.data.phantom.ct_case import synth_ct_case
    from medseg.io import read_nifti
    from medseg.workflow import load_workflow
    from medseg.workflow.runner import run_workflow

    synth_ct_case(tmp_path / "studies" / "one", seed=5, size=80, slices=32, findings=[])
    model = _constant_lobe_model(tmp_path / "model.safetensors")
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump({
        "version": 1, "name": "reordered", "inputs": {"path": str(tmp_path / "studies"),
                                                     "series": {"min_slices": 10}},
        "steps": ["lung_mask", {"segment_lobes": {"model": str(model)}}, "statistics",
                  {"export": {"nifti": True, "dicom_seg": True, "overlays": True, "review_html": False}}],
        "output": {"dir": str(tmp_path / "out"), "layout": "{case_id}"}, "device": "cpu"}))
    run_workflow(load_workflow(tmp_path / "wf.yaml"), progress=False)
    case = next(p for p in (tmp_path / "out").iterdir() if (p / "case.json").exists())
    lobes = read_nifti(case / "lobes.nii.gz").array
    assert set(np.unique(lobes)) == {0, RIGHT_WINNER, LEFT_WINNER}

    # DICOM SEG: each segment's codes are those of the card's name for its value
    seg = pydicom.dcmread(case / "lobes_seg.dcm")
    coded = {}
    for item in seg.SegmentSequence:
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        coded[item.SegmentLabel] = (kind.CodeValue, kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning)
    assert coded == {"Right lower lobe": ("90572001", "Right"), "Left lower lobe": ("90572001", "Left")}
    from medseg.export.dicom_seg import read_dicom_seg_labels
    from medseg.io import load_volume

    volume = load_volume(tmp_path / "studies" / "one" / "ct")
    assert np.array_equal(read_dicom_seg_labels(case / "lobes_seg.dcm", volume, label_map=REORDERED), lobes)

    # statistics: rows named by the card (value order), lung rows grouped by side whatever the values
    stats = json.loads((case / "statistics.json").read_text())
    rows = {row["name"]: row for row in stats["rows"]}
    assert [row["name"] for row in stats["rows"]][:5] == ["RLL", "LUL", "RML", "LLL", "RUL"]
    assert rows["RLL"]["label"] == RIGHT_WINNER and rows["RLL"]["voxels"] == int((lobes == RIGHT_WINNER).sum())
    assert rows["right_lung"]["voxels"] == rows["RLL"]["voxels"] and rows["left_lung"]["voxels"] == rows["LLL"][
        "voxels"]

    # overlay: the legend's swatches, left to right in value order, carry the card names' registry colours
    legend = np.asarray(Image.open(case / "overlay.png").convert("RGB"))[13]
    registry = {label.name: label.colour for label in label_map("lobes").foreground}
    positions = []
    for value in range(1, 6):
        colour = registry[REORDERED[value]]
        hits = np.flatnonzero((legend == colour).all(axis=1))
        assert hits.size, f"no legend swatch in {REORDERED[value]}'s colour {colour}"
        positions.append(int(hits[0]))
    assert positions == sorted(positions)
