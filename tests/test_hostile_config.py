"""Hostile configs and model cards (issue #13): refused fast, without allocating, with one clear line.

YAML alias bombs, oversized files, self-referencing YAML; model cards with absurd architectures, label maps
that do not fit the network, tampered weight shapes, and pickled torch files. Anything that could eat
memory on a build without these checks runs in a child process with an address-space cap, and the child's
peak resident memory is measured.
"""

from __future__ import annotations

import fractions
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict

from medseg.configfile import key_lines, load_config, read_mapping
from medseg.errors import ConfigError
from medseg.models import ModelCard, create_model, load_checkpoint, load_model_config, save_checkpoint
from medseg.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
SMALL_FEATURES = (4, 4, 8, 8, 16, 4)
LOBES = {0: "background", 1: "left upper lobe", 2: "left lower lobe", 3: "right upper lobe",
         4: "right middle lobe", 5: "right lower lobe"}
CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Edema", "Nodule", "Pneumothorax"]

# Runs argv[3:] with an address-space cap of argv[1] bytes and a timeout of argv[2] seconds; prints its
# exit code, output, wall time and peak resident memory (this wrapper's only child) as JSON.
_MEASURE = r"""
import json, resource, subprocess, sys, time
cap = int(sys.argv[1])
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.perf_counter()
try:
    done = subprocess.run(sys.argv[3:], capture_output=True, text=True, preexec_fn=limit, timeout=float(sys.argv[2]))
    rc, out, err = done.returncode, done.stdout, done.stderr
except subprocess.TimeoutExpired as exc:
    rc, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
print(json.dumps({"rc": rc, "stdout": out, "stderr": err, "seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _measure(args: list[str], cap_mb: int, timeout: float = 60.0) -> dict:
    env_cmd = [sys.executable, "-c", _MEASURE, str(cap_mb * 2**20), str(timeout), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}  # few threads: less address space
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=timeout + 60, env=env)
    return json.loads(done.stdout)


def _medseg(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "medseg", *map(str, args)]


def _assert_one_line_error(result: dict, *parts: str) -> str:
    """Exit code 2 and a single `medseg: error:` line containing `parts`; no traceback, not an internal error."""
    err = result["stderr"].strip()
    assert result["rc"] == 2, result
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level lists the previous one `width` times (width**levels leaves)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    rows = [f"a: &a [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        rows.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * width)}]")
    return "\n".join(rows) + "\n"


class _Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------------------------------ YAML


def test_yaml_bomb_is_refused_by_validate_fast_and_small(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert path.stat().st_size < 700
    result = _measure(_medseg("validate", path), cap_mb=1024)
    _assert_one_line_error(result, str(path), "alias bomb")
    assert result["seconds"] < 2.0 and result["peak_mb"] < 200, result


def test_yaml_bomb_in_a_training_config_is_refused(tmp_path: Path) -> None:
    config = (REPO / "configs" / "train" / "demo_lobes.yaml").read_text()
    path = tmp_path / "train.yaml"
    path.write_text(config + "\n" + _bomb())
    result = _measure(_medseg("train", path), cap_mb=2048)
    _assert_one_line_error(result, str(path), "alias bomb")
    assert result["seconds"] < 5.0 and result["peak_mb"] < 400, result
    small = tmp_path / "small.yaml"   # in-process: a smaller bomb (531,441 leaves) the old code could survive
    small.write_text(config + "\n" + _bomb(levels=6))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb") as info:
        load_train_config(small)
    assert time.perf_counter() - start < 2.0
    assert info.value.path == str(small)


def test_load_config_refuses_a_bomb_but_keeps_ordinary_aliases(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(levels=6))
    for load in (lambda p: load_config(_Anything, p), read_mapping, load_model_config):
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"more than [\d,]+ nodes .*alias bomb") as info:
            load(bomb)
        assert time.perf_counter() - start < 2.0
        assert info.value.path == str(bomb)
    ordinary = tmp_path / "ordinary.yaml"
    ordinary.write_text("window: &w {center: -600, width: 1500}\nwindows: [*w, *w, {center: 40, width: 400}]\n")
    assert read_mapping(ordinary)["windows"][1] == {"center": -600, "width": 1500}
    lines = key_lines(ordinary)   # an alias item has its anchor's line (PyYAML keeps no mark for an alias)
    assert lines[("windows",)] == 2 and lines[("windows", 1)] == 1 and lines[("windows", 2)] == 2


def test_key_lines_walks_each_node_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    code = ("import json, sys, time; from medseg.configfile import key_lines; t = time.perf_counter(); "
            "lines = key_lines(sys.argv[1]); print(json.dumps([time.perf_counter() - t, len(lines), "
            "lines[('i',)], lines[('i', 8)], lines[('a', 0)]]))")
    result = _measure([sys.executable, "-c", code, str(path)], cap_mb=1024, timeout=30)
    assert result["rc"] == 0, result
    seconds, count, *lines = json.loads(result["stdout"])
    assert seconds < 1.0 and count < 200 and lines == [9, 8, 1], result  # ('i', 8) is `*h`, anchored on line 8
    assert result["peak_mb"] < 200, result


def test_self_referencing_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("steps: &s\n  - lung_mask\n  - *s\n")
    with pytest.raises(ConfigError, match="refers to itself") as info:
        read_mapping(path)
    assert info.value.path == str(path)
    assert key_lines(path) == {("steps",): 1, ("steps", 0): 2, ("steps", 1): 1}  # walked once, no endless loop


def test_oversized_config_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as handle:
        handle.write("version: 1\n")
        handle.write(("#" + "x" * 1023 + "\n") * (11 * 1024))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"over 10 MB are refused") as info:
        read_mapping(path, "workflow")
    assert time.perf_counter() - start < 1.0
    assert info.value.path == str(path)
    assert key_lines(path) == {}


# ----------------------------------------------------------------------------------------- model cards


def _segmenter(tmp_path: Path) -> Path:
    model = create_model("unet", in_channels=1, out_channels=6, features=SMALL_FEATURES)
    card = ModelCard.from_model(model, task="lobes", labels=LOBES, spacing=[1.0, 1.0, 2.0],
                                preprocessing={"windows": [{"center": -600, "width": 1500}], "stack": 1})
    return save_checkpoint(tmp_path / "lobes.safetensors", model, card)


def _classifier(tmp_path: Path) -> Path:
    model = create_model("unet_classifier", in_channels=1, out_channels=6, features=SMALL_FEATURES)
    card = ModelCard.from_model(model, task="classification", labels=dict(enumerate(CLASSES)),
                                extra={"classes": CLASSES, "multilabel": True,
                                       "thresholds": {name: 0.5 for name in CLASSES}})
    return save_checkpoint(tmp_path / "cxr.safetensors", model, card)


def _rewrite(source: Path, target: Path, card_changes: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of a checkpoint with its card fields and/or tensors replaced (written as safetensors)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as handle:
        metadata = dict(handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    card = json.loads(metadata["medseg_card"]) | (card_changes or {})
    metadata["medseg_card"] = json.dumps(card)
    save_file(state | (tensors or {}), str(target), metadata=metadata)
    return target


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "cxr.png"
    Image.fromarray(np.full((48, 48), 100, np.uint8)).save(path)
    return path


def test_absurd_architecture_is_refused_without_allocating(tmp_path: Path) -> None:
    source = _segmenter(tmp_path)
    huge = _rewrite(source, tmp_path / "huge.safetensors",   # 3.1 billion parameters (12 GB of float32)
                    {"architecture_args": {"in_channels": 1, "out_channels": 6, "features": [4096] * 6}})
    result = _measure(_medseg("segment", tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz", "--model", huge),
                      cap_mb=8192)
    line = _assert_one_line_error(result, str(huge), "parameters", "refused before allocating")
    assert "3,112 M" in line, line
    assert result["seconds"] < 30 and result["peak_mb"] < 1000, result

    wide = _rewrite(source, tmp_path / "wide.safetensors",
                    {"architecture_args": {"in_channels": 1, "out_channels": 6, "features": [10**7] * 6}})
    code = "import sys; from medseg.models import load_checkpoint; load_checkpoint(sys.argv[1])"
    result = _measure([sys.executable, "-c", code, str(wide)], cap_mb=8192)
    assert result["rc"] == 1 and "ConfigError" in result["stderr"] and "absurd architecture" in result["stderr"]
    assert str(wide) in result["stderr"] and result["peak_mb"] < 1000, result


def test_card_channels_must_be_what_the_builder_makes(tmp_path: Path) -> None:
    source = _classifier(tmp_path)
    args = {"in_channels": 1, "features": list(SMALL_FEATURES)}   # out_channels left at the default (6)
    bad = _rewrite(source, tmp_path / "bad.safetensors",
                   {"architecture_args": args, "out_channels": 3, "labels": {"0": "a", "1": "b", "2": "c"},
                    "extra": {}})
    with pytest.raises(ConfigError, match=r"out_channels=3 but 'unet_classifier'.*builds out_channels=6") as info:
        load_checkpoint(bad)
    assert info.value.path == str(bad)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"labels": {"0": "Atelectasis", "1": "Cardiomegaly", "2": "Effusion"}}, "label name for each of its 6"),
    ({"labels": {str(i): name for i, name in enumerate(CLASSES[:5])}}, r"missing \[5\]"),
    ({"labels": {**{str(i): name for i, name in enumerate(CLASSES)}, "5": "Edema"}}, "label names are repeated"),
    ({"labels": {**{str(i): name for i, name in enumerate(CLASSES)}, "5": " "}}, "empty names"),
    ({"labels": {**{str(i): name for i, name in enumerate(CLASSES[:5])}, "05": "Pneumothorax"}}, "plain"),
    ({"extra": {"classes": CLASSES[:3]}}, "extra.classes"),
    ({"extra": {"thresholds": {name: 0.5 for name in CLASSES[:3]}}}, "no threshold for"),
    ({"extra": {"thresholds": {name: "high" for name in CLASSES}}}, "not finite numbers"),
])
def test_label_map_that_does_not_fit_the_network_is_refused(tmp_path: Path, changes: dict, expected: str) -> None:
    bad = _rewrite(_classifier(tmp_path), tmp_path / "bad.safetensors", changes)
    with pytest.raises(ConfigError, match=expected) as info:
        load_checkpoint(bad)
    assert info.value.path == str(bad)


def test_segmentation_card_needs_a_label_per_channel(tmp_path: Path) -> None:
    bad = _rewrite(_segmenter(tmp_path), tmp_path / "bad.safetensors",
                   {"labels": {"0": "background", "1": "right lung", "2": "left lung"}})
    with pytest.raises(ConfigError, match="'lobes' model needs a label name for each of its 6") as info:
        load_checkpoint(bad)
    assert info.value.path == str(bad)
    result = _measure(_medseg("segment", tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz", "--model", bad),
                      cap_mb=8192)
    _assert_one_line_error(result, str(bad), "label name for each")


def test_classify_cli_refuses_a_label_mismatch_in_one_line(tmp_path: Path) -> None:
    bad = _rewrite(_classifier(tmp_path), tmp_path / "bad.safetensors",
                   {"labels": {"0": "Atelectasis", "1": "Cardiomegaly", "2": "Effusion"},
                    "extra": {"thresholds": {"Atelectasis": 0.5, "Cardiomegaly": 0.5, "Effusion": 0.5}}})
    out = tmp_path / "p.csv"
    result = _measure(_medseg("classify", _image(tmp_path), "--model", bad, "--out", out), cap_mb=8192)
    _assert_one_line_error(result, str(bad), "label name for each of its 6 output channels")
    assert not out.exists()


def test_tampered_weight_shapes_are_refused_before_reading_tensors(tmp_path: Path, monkeypatch) -> None:
    source = _segmenter(tmp_path)
    key = "final_conv.weight"
    assert key in load_checkpoint(source)[0].state_dict()
    tampered = _rewrite(source, tmp_path / "tampered.safetensors", tensors={key: torch.zeros(7, 4, 1, 1)})
    result = _measure(_medseg("segment", tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz", "--model", tampered),
                      cap_mb=8192)
    _assert_one_line_error(result, str(tampered), "checkpoint weights do not match its model card",
                           f"{key} has shape (7, 4, 1, 1), the card's model expects (6, 4, 1, 1)")

    def no_tensor_reading(*args, **kwargs):
        raise AssertionError("tensors were read before the shapes were checked")

    monkeypatch.setattr("safetensors.torch.load_file", no_tensor_reading)
    with pytest.raises(ConfigError, match="do not match its model card") as info:
        load_checkpoint(tampered)
    assert info.value.path == str(tampered)


def _pickled(tmp_path: Path, name: str) -> Path:
    model = create_model("unet_classifier", in_channels=1, out_channels=6, features=SMALL_FEATURES)
    card = ModelCard.from_model(model, task="classification", labels=dict(enumerate(CLASSES)))
    path = tmp_path / name
    torch.save({"card": card.to_dict(), "state_dict": model.state_dict(), "note": fractions.Fraction(1, 3)}, path)
    return path


def _assert_refusal_says_no(message: str) -> None:
    lowered = message.lower()
    assert "pickled python objects" in lowered and "refuses" in lowered, message
    assert "weights_only=false" not in lowered.replace(" ", "") and "re-run" not in lowered, message
    assert "weights_only` set to `false" not in lowered and "can still be loaded" not in lowered, message


def test_pickled_checkpoint_refusal_never_advises_unpickling(tmp_path: Path) -> None:
    path = _pickled(tmp_path, "pickled.pt")
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    assert info.value.path == str(path)
    _assert_refusal_says_no(str(info.value))
    assert "fractions.Fraction" in str(info.value)

    weights = _pickled(tmp_path, "resnet18.pth")
    with pytest.raises(ConfigError) as info:
        create_model("unet_resnet18", out_channels=2, pretrained=weights)
    assert info.value.path == str(weights)
    _assert_refusal_says_no(str(info.value))

    result = _measure(_medseg("classify", _image(tmp_path), "--model", path, "--out", tmp_path / "p.csv"),
                      cap_mb=8192)
    _assert_refusal_says_no(_assert_one_line_error(result, str(path)))
