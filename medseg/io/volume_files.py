"""NIfTI / NRRD / MHA volumes: reading (nibabel, SimpleITK) and atomic NIfTI writing."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_series import ReadOptions
from medseg.io.volume import Volume, check_affine, check_voxel_budget, lps_to_ras, replace_non_finite

__all__ = ["ITK_SUFFIXES", "NIFTI_SUFFIXES", "is_volume_file", "read_itk_image", "read_nifti", "write_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

log = logging.getLogger(__name__)

_SITK_DTYPES = {
    "8-bit unsigned integer": np.uint8, "8-bit signed integer": np.int8, "16-bit unsigned integer": np.uint16,
    "16-bit signed integer": np.int16, "32-bit unsigned integer": np.uint32, "32-bit signed integer": np.int32,
    "64-bit unsigned integer": np.uint64, "64-bit signed integer": np.int64, "32-bit float": np.float32,
    "64-bit float": np.float64,
}
"""numpy type of a SimpleITK pixel type (by its name), for the header-only size checks."""


def is_volume_file(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, found shape {array.shape}", path)
    return array


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _check_header(shape: tuple[int, ...], dtype: np.dtype, options: ReadOptions, path: Path) -> int:
    """Refuse, from the header alone, images that are not 3D, empty or over the voxel budget; their size in bytes."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputError(f"expected a 3D volume, header says {'x'.join(map(str, shape))} voxels", path)
    check_voxel_budget(shape, dtype, options.max_voxels, path)
    return math.prod(shape) * dtype.itemsize


def _check_data_size(data_file: Path, offset: int, nbytes: int, path: Path) -> None:
    """Refuse a header that promises more voxel data than the file holds (before allocating for it)."""
    available = data_file.stat().st_size - offset
    if available < nbytes:
        raise InputError(f"truncated: header promises {nbytes} bytes of voxel data, file holds {max(available, 0)}",
                         path)


def _finish(array: np.ndarray, affine: np.ndarray, path: Path, options: ReadOptions) -> Volume:
    array, note = replace_non_finite(_squeeze_to_3d(array, path), options.on_non_finite, path)
    if note:
        log.warning("%s: %s", path, note)
    return Volume(array=array, affine=affine, source=str(path), notes=[note] if note else [])


def read_nifti(path: str | os.PathLike[str], options: ReadOptions | None = None) -> Volume:
    """Read a NIfTI file with nibabel; the affine is the one nibabel chooses (sform, else qform).

    Shape, budget (`options.max_voxels`), file size and affine are checked from the header before any voxel
    is read; NaN/inf voxels are handled by `options.on_non_finite`.
    """
    import nibabel as nib

    options = options or ReadOptions()
    path = Path(path)
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.header.get_data_shape())
        dtype = np.dtype(image.header.get_data_dtype())
        offset = int(getattr(image.dataobj, "offset", image.header.get_data_offset()))
        affine = image.affine
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except Exception as exc:
        raise InputError(f"not a readable NIfTI file ({_reason(exc)})", path) from exc
    nbytes = _check_header(shape, dtype, options, path)
    if not str(path).lower().endswith(".gz"):
        _check_data_size(path, offset, nbytes, path)
    affine = check_affine(affine, path)
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise InputError(f"not a readable NIfTI file ({_reason(exc)})", path) from exc
    return _finish(array, affine, path, options)


def _itk_raw_data(path: Path) -> tuple[Path, int] | None:
    """(file, offset) of uncompressed MetaImage / NRRD voxel data; None when compressed or not simple."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    fields: dict[bytes, bytes] = {}
    offset = 0
    if path.suffix.lower() in (".mha", ".mhd"):
        for line in head.splitlines(keepends=True):
            key, _, value = line.partition(b"=")
            offset += len(line)
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == b"elementdatafile":
                break
        if fields.get(b"compresseddata", b"false").lower() == b"true":
            return None
        data_file = fields.get(b"elementdatafile", b"")
    else:
        end = head.find(b"\n\n")
        if end < 0:
            return None
        offset = end + 2
        for line in head[:end].splitlines():
            key, _, value = line.partition(b":")
            fields[key.strip().lower()] = value.strip().lstrip(b"=").strip()
        if fields.get(b"encoding", b"").lower() != b"raw" or b"line skip" in fields or b"byte skip" in fields:
            return None
        data_file = fields.get(b"data file") or fields.get(b"datafile") or b"LOCAL"
    if data_file.upper() == b"LOCAL":
        return path, offset
    if not data_file or data_file.upper().startswith(b"LIST") or b" " in data_file or b"%" in data_file:
        return None
    return path.parent / data_file.decode(errors="replace"), 0


def read_itk_image(path: str | os.PathLike[str], options: ReadOptions | None = None) -> Volume:
    """Read NRRD / MHA / MHD with SimpleITK, converting its LPS geometry to a RAS affine.

    Shape, budget, file size and geometry come from `ReadImageInformation` and are checked before the voxels
    are read; NaN/inf voxels are handled by `options.on_non_finite`.
    """
    import SimpleITK as sitk

    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"not a readable image file ({_reason(exc)})", path) from exc
    if reader.GetNumberOfComponents() != 1:
        raise InputError("multi-component (vector/RGB) volumes are not supported", path)
    dtype = np.dtype(_SITK_DTYPES.get(sitk.GetPixelIDValueAsString(reader.GetPixelID()), np.float64))
    nbytes = _check_header(tuple(reader.GetSize()), dtype, options, path)
    raw = _itk_raw_data(path)
    if raw is not None:
        if not raw[0].is_file():
            raise InputError(f"voxel data file {raw[0].name} not found", path)
        _check_data_size(raw[0], raw[1], nbytes, path)
    affine = check_affine(_affine_ras(reader.GetDimension(), reader.GetDirection(), reader.GetSpacing(),
                                      reader.GetOrigin()), path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"not a readable image file ({_reason(exc)})", path) from exc
    return _finish(sitk_array_ijk(image), affine, path, options)


def sitk_array_ijk(image) -> np.ndarray:
    """SimpleITK's (k, j, i) array as an (i, j, k) view."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return array.transpose(tuple(range(array.ndim))[::-1])


def sitk_affine_ras(image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (padded to 3D)."""
    return _affine_ras(image.GetDimension(), image.GetDirection(), image.GetSpacing(), image.GetOrigin())


def _affine_ras(dim: int, direction_values, spacing_values, origin_values) -> np.ndarray:
    dim = min(dim, 3)  # a 4D image with a single volume: its first three axes
    direction = np.eye(3)
    side = math.isqrt(len(direction_values))
    direction[:dim, :dim] = np.array(direction_values, dtype=np.float64).reshape(side, side)[:dim, :dim]
    spacing = np.ones(3)
    spacing[:dim] = spacing_values[:dim]
    origin = np.zeros(3)
    origin[:dim] = origin_values[:dim]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    return lps_to_ras(affine)


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, label: bool = False) -> Path:
    """Write `volume` atomically as NIfTI-1 (gzip for `.nii.gz`), qform and sform both set (scanner).

    `label=True` stores a label map as uint8 and refuses values that do not fit.
    """
    import nibabel as nib

    path = Path(path)
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise InputError("output must end in .nii or .nii.gz", path)
    array = volume.array
    if label:
        if array.size and (array.min() < 0 or array.max() > 255 or
                           (array.dtype.kind == "f" and not np.array_equal(array, np.round(array)))):
            raise InputError("label map values must be integers in 0..255", path)
        array = array.astype(np.uint8, copy=False)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    image = nib.Nifti1Image(array, volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    image.header.set_xyzt_units("mm")
    if label:
        image.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path
