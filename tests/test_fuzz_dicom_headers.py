"""Seeded fuzzing of DICOM headers through `medseg info`, `convert` and `segment --task lungs` (issue #13).

Each mutated series is a small CT phantom whose headers (one slice or all) got 1-3 hostile edits: lying sizes and
bit depths, NaN / inf / zero / garbage numbers, broken geometry, missing tags, other transfer syntaxes, mixed
series, truncated or bit-flipped files. Every command must end with exit code 0 or 2, never a traceback and
never an "internal error" (an exception medseg did not anticipate); a failed command leaves no output file; a
successful `convert` writes finite voxels and `info --json` strict JSON.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid

from medseg.cli import main

SERIES_PER_BATCH = 30
BATCHES = 10                                        # 300 mutated series in all

_VALUES: dict[str, tuple[str, list]] = {
    "Rows": ("US", [0, 1, 7, 65535]),
    "Columns": ("US", [0, 1, 65535]),
    "BitsAllocated": ("US", [0, 1, 7, 12, 32, 64]),
    "BitsStored": ("US", [0, 1, 17, 64]),
    "HighBit": ("US", [0, 40]),
    "PixelRepresentation": ("US", [1, 2]),
    "SamplesPerPixel": ("US", [0, 3]),
    "PhotometricInterpretation": ("CS", ["RGB", "PALETTE COLOR", "MONOCHROME1", "YBR_FULL", "", "XXXX"]),
    "RescaleSlope": ("DS", ["NaN", "inf", "-inf", "0", "-1", "1e308", "abc", ""]),
    "RescaleIntercept": ("DS", ["NaN", "1e308", "-1e308", "x", ""]),
    "PixelSpacing": ("DS", ["0\\0", "NaN\\1", "1", "-1\\-1", "inf\\1", "1e-300\\1e-300", "a\\b", "1\\2\\3"]),
    "SliceThickness": ("DS", ["0", "NaN", "-5", "x", "1e308"]),
    "SpacingBetweenSlices": ("DS", ["0", "NaN", "-5", "inf"]),
    "ImagePositionPatient": ("DS", ["NaN\\0\\0", "1\\2", "1e308\\1e308\\1e308", "a\\b\\c", "", "0\\0\\0"]),
    "ImageOrientationPatient": ("DS", ["0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "NaN\\0\\0\\0\\1\\0", "1\\0\\0",
                                       "1e308\\0\\0\\0\\1\\0", "0\\0\\1\\0\\1\\0"]),
    "NumberOfFrames": ("IS", ["0", "2", "x", "-1"]),
    "PixelPaddingValue": ("US", [0, 65535, 1024]),
    "Modality": ("CS", ["MR", "", "SEG", "DX"]),
    "WindowCenter": ("DS", ["NaN", "x"]),
    "WindowWidth": ("DS", ["0", "-1", "NaN"]),
    "SeriesInstanceUID": ("UI", ["", "../..", "1.2.3"]),
    "StudyInstanceUID": ("UI", ["", "1.2.3"]),
    "PatientID": ("LO", ["../../x", ""]),
    "InstanceNumber": ("IS", ["x", "99999999999", "-1"]),
    "ImageType": ("CS", ["DERIVED\\SECONDARY\\LOCALIZER", ""]),
}
_DELETABLE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelData", "ImagePositionPatient",
              "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept", "SOPInstanceUID",
              "StudyInstanceUID", "SeriesInstanceUID", "Modality", "PhotometricInterpretation", "SamplesPerPixel",
              "PixelRepresentation", "SliceThickness")
_SYNTAXES = (JPEGBaseline8Bit, JPEG2000Lossless, RLELossless, ExplicitVRBigEndian, "1.2.3.4.5.6", "")


@pytest.fixture(scope="module")
def base_series(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The unmutated phantom series as file bytes (12 slices of 48 x 48)."""
    from medseg.data.phantom.ct_case import synth_ct_case

    case = synth_ct_case(tmp_path_factory.mktemp("fuzz_base") / "case", seed=5, size=48, slices=12, findings=[])
    return [path.read_bytes() for path in sorted((case.folder / "ct").glob("*.dcm"))]


def _set_value(rng: np.random.Generator, datasets: list[pydicom.Dataset]) -> str:
    keyword = str(rng.choice(sorted(_VALUES)))
    vr, values = _VALUES[keyword]
    value = values[int(rng.integers(len(values)))]
    targets = datasets if rng.random() < 0.5 else [datasets[int(rng.integers(len(datasets)))]]
    if keyword in ("SeriesInstanceUID", "StudyInstanceUID") and rng.random() < 0.5:
        for ds in targets:                                  # a different UID per slice: a split series
            _put(ds, keyword, vr, generate_uid())
        return f"{keyword}=<one per slice>"
    for ds in targets:
        _put(ds, keyword, vr, value)
    return f"{keyword}={value!r} on {len(targets)} slice(s)"


def _put(ds: pydicom.Dataset, keyword: str, vr: str, value: object) -> None:
    """Store `value` as it is: text values as raw bytes, so pydicom neither checks nor converts them."""
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    if vr == "US":
        ds[tag] = DataElement(tag, vr, value)
        return
    raw = str(value).encode("latin-1")
    raw += b" " if len(raw) % 2 else b""
    ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _delete(rng: np.random.Generator, datasets: list[pydicom.Dataset]) -> str:
    keyword = str(rng.choice(_DELETABLE))
    targets = datasets if rng.random() < 0.5 else [datasets[int(rng.integers(len(datasets)))]]
    for ds in targets:
        if keyword in ds:
            del ds[keyword]
    return f"delete {keyword} on {len(targets)} slice(s)"


def _syntax(rng: np.random.Generator, datasets: list[pydicom.Dataset]) -> str:
    syntax = _SYNTAXES[int(rng.integers(len(_SYNTAXES)))]
    targets = datasets if rng.random() < 0.5 else [datasets[int(rng.integers(len(datasets)))]]
    for ds in targets:
        ds.file_meta.TransferSyntaxUID = syntax
    return f"TransferSyntaxUID={syntax!r} on {len(targets)} slice(s)"


def _pixel_length(rng: np.random.Generator, datasets: list[pydicom.Dataset]) -> str:
    ds = datasets[int(rng.integers(len(datasets)))]
    data = ds.PixelData
    ds.PixelData = data[: int(rng.integers(0, len(data)))] if rng.random() < 0.5 else data + b"\0" * 64
    return "pixel data length changed on 1 slice"


def _duplicate_position(rng: np.random.Generator, datasets: list[pydicom.Dataset]) -> str:
    a, b = rng.choice(len(datasets), 2, replace=False)
    datasets[int(a)].ImagePositionPatient = list(datasets[int(b)].ImagePositionPatient)
    return "two slices at one position"


_DATASET_MUTATIONS: list[Callable[[np.random.Generator, list[pydicom.Dataset]], str]] = [
    _set_value, _set_value, _set_value, _delete, _syntax, _pixel_length, _duplicate_position]


def _mutated_series(base: list[bytes], seed: int, folder: Path) -> list[str]:
    """Write one mutated copy of the base series into `folder`; returns what was done."""
    from io import BytesIO

    rng = np.random.default_rng(seed)
    datasets = [pydicom.dcmread(BytesIO(data)) for data in base]
    done = [_DATASET_MUTATIONS[int(rng.integers(len(_DATASET_MUTATIONS)))](rng, datasets)
            for _ in range(int(rng.integers(1, 4)))]
    folder.mkdir(parents=True)
    for index, ds in enumerate(datasets):
        path = folder / f"slice_{index:04d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=False)
        except Exception:                                   # a mutation pydicom itself cannot write: raw bytes
            path.write_bytes(base[index])
    if rng.random() < 0.25:                                  # byte-level damage to one file
        victim = folder / f"slice_{int(rng.integers(len(datasets))):04d}.dcm"
        data = bytearray(victim.read_bytes())
        if rng.random() < 0.5:
            data = data[: int(rng.integers(0, len(data)))]
            done.append("file truncated")
        else:
            for position in rng.integers(0, min(len(data), 1500), 8):
                data[int(position)] ^= 0xFF
            done.append("8 header bytes flipped")
        victim.write_bytes(bytes(data))
    return done


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def _check(result, output: Path | None, what: str) -> list[str]:
    """Problems with one command's result."""
    problems = []
    text = result.output
    if result.exit_code not in (0, 2):
        problems.append(f"{what}: exit code {result.exit_code} ({type(result.exception).__name__}: "
                        f"{result.exception})")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"{what}: raised {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in text or "internal error" in text:
        problems.append(f"{what}: {text.strip().splitlines()[-1][:300]}")
    if result.exit_code == 2 and output is not None and output.exists():
        problems.append(f"{what}: failed but left {output.name}")
    if output is not None and output.parent.is_dir() and [p for p in output.parent.iterdir() if ".tmp-" in p.name]:
        problems.append(f"{what}: left a temporary file")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("batch", range(BATCHES))
def test_mutated_headers_never_give_a_traceback(base_series: list[bytes], tmp_path: Path, batch: int) -> None:
    import nibabel as nib

    runner = CliRunner()
    problems: list[str] = []
    outcomes = {"ok": 0, "refused": 0}
    for number in range(SERIES_PER_BATCH):
        seed = batch * SERIES_PER_BATCH + number
        folder = tmp_path / f"s{seed}"
        done = _mutated_series(base_series, seed, folder / "dicom")
        found: list[str] = []
        info = runner.invoke(main, ["info", str(folder / "dicom"), "--json"])
        found += _check(info, None, "info")
        if info.exit_code == 0:
            try:
                _strict_json(info.output[info.output.index("{"):])
            except ValueError as exc:
                found.append(f"info --json: {exc}")
        converted = folder / "out" / "ct.nii.gz"
        convert = runner.invoke(main, ["convert", str(folder / "dicom"), str(converted)])
        found += _check(convert, converted, "convert")
        if convert.exit_code == 0 and converted.exists():
            data = np.asanyarray(nib.load(converted).dataobj)
            if not np.isfinite(data).all():
                found.append("convert: wrote non-finite voxels")
        lungs = folder / "out" / "lungs.nii.gz"
        segment = runner.invoke(main, ["segment", str(folder / "dicom"), str(lungs), "--task", "lungs"])
        found += _check(segment, lungs, "segment --task lungs")
        outcomes["ok" if convert.exit_code == 0 else "refused"] += 1
        problems += [f"seed {seed} ({'; '.join(done)}): {line}" for line in found]
        shutil.rmtree(folder, ignore_errors=True)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert outcomes["ok"] + outcomes["refused"] == SERIES_PER_BATCH
