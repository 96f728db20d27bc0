"""NIfTI writing: atomic, gzip, qform+sform, label maps as uint8."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import Volume, write_nifti


def _volume(array: np.ndarray) -> Volume:
    affine = np.array([[-0.7, 0, 0.1, 120], [0, -0.7, 0, 95], [0, 0, 2.5, -300], [0, 0, 0, 1]])
    return Volume(array=array, affine=affine)


def test_label_map_written_as_uint8_with_both_transforms(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 6, (9, 8, 7)).astype(np.int64)
    path = write_nifti(_volume(labels), tmp_path / "lobes.nii.gz", label=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(image.dataobj), labels)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert np.allclose(image.get_sform(), _volume(labels).affine)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_intensity_volume_keeps_dtype_and_plain_nii(tmp_path: Path) -> None:
    hu = np.arange(-1024, -1024 + 9 * 8 * 7, dtype=np.int16).reshape(9, 8, 7)
    image = nib.load(write_nifti(_volume(hu), tmp_path / "ct.nii"))
    assert image.get_data_dtype() == np.int16 and np.array_equal(np.asarray(image.dataobj), hu)


@pytest.mark.parametrize("bad", [np.full((3, 3, 3), 300), np.full((3, 3, 3), -1), np.full((3, 3, 3), 1.5)])
def test_label_values_outside_uint8_refused_and_nothing_written(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(InputError, match="label map values"):
        write_nifti(_volume(bad), tmp_path / "mask.nii.gz", label=True)
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ct.nii.gz"
    write_nifti(_volume(np.zeros((4, 4, 4), np.int16)), target)
    before = target.read_bytes()

    def exploding_save(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(_volume(np.ones((4, 4, 4), np.int16)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]
