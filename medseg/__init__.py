"""medseg: chest CT lobe segmentation and chest X-ray classification with exact geometry."""

from medseg.errors import ConfigError, DicomError, GeometryError, InputError, MedsegError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DicomError", "GeometryError", "InputError", "MedsegError", "__version__"]
