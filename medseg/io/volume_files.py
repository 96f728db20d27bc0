"""NIfTI / NRRD / MHA volumes: reading (nibabel, SimpleITK) and atomic NIfTI writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume, lps_to_ras

__all__ = ["ITK_SUFFIXES", "NIFTI_SUFFIXES", "is_volume_file", "read_itk_image", "read_nifti", "write_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


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


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI file with nibabel; the affine is the one nibabel chooses (sform, else qform)."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except Exception as exc:
        raise InputError(f"not a readable NIfTI file ({exc})", path) from exc
    return Volume(array=_squeeze_to_3d(array, path), affine=image.affine, source=str(path))


def read_itk_image(path: str | os.PathLike[str]) -> Volume:
    """Read NRRD / MHA / MHD with SimpleITK, converting its LPS geometry to a RAS affine."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"not a readable image file ({str(exc).strip().splitlines()[-1]})", path) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("multi-component (vector/RGB) volumes are not supported", path)
    return Volume(array=_squeeze_to_3d(sitk_array_ijk(image), path), affine=sitk_affine_ras(image),
                  source=str(path))


def sitk_array_ijk(image) -> np.ndarray:
    """SimpleITK's (k, j, i) array as an (i, j, k) view."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return array.transpose(tuple(range(array.ndim))[::-1])


def sitk_affine_ras(image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (padded to 3D)."""
    dim = image.GetDimension()
    direction = np.eye(3)
    direction[:dim, :dim] = np.array(image.GetDirection()).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
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
