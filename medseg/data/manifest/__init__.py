"""Dataset manifests: the schema (version 1), loading/saving, checksums, splits and validation.

A manifest is a YAML or JSON file listing a dataset's cases (image and label paths relative to the
manifest's folder), patient-level splits, the label map, sha256 checksums and provenance.
`validate_manifest` checks a manifest against the files it references.

Modules: `schema` (the pydantic models, `LOBE_LABELS`, the JSON Schema), `storage` (load / save),
`hashing` (paths, sha256 checksums, `build_case`), `splits` (patient-level splits), `validation`.
"""

from __future__ import annotations

from medseg.data.manifest.hashing import (
    PROGRESS_MIN_ITEMS,
    build_case,
    checksum_paths,
    files_under,
    progress,
    resolve_path,
    sha256_file,
)
from medseg.data.manifest.schema import (
    LOBE_LABELS,
    MANIFEST_SUFFIXES,
    SCHEMA_VERSION,
    SPLITS,
    CaseRecord,
    Manifest,
    ManifestSchemaError,
    Provenance,
    Split,
    Task,
    manifest_json_schema,
    write_json_schema,
)
from medseg.data.manifest.splits import assign_patient_splits
from medseg.data.manifest.storage import load_manifest, manifest_to_dict, save_manifest
from medseg.data.manifest.validation import Problem, ValidationReport, validate_manifest

__all__ = [
    "LOBE_LABELS",
    "MANIFEST_SUFFIXES",
    "PROGRESS_MIN_ITEMS",
    "SCHEMA_VERSION",
    "SPLITS",
    "CaseRecord",
    "Manifest",
    "ManifestSchemaError",
    "Problem",
    "Provenance",
    "Split",
    "Task",
    "ValidationReport",
    "assign_patient_splits",
    "build_case",
    "checksum_paths",
    "files_under",
    "load_manifest",
    "manifest_json_schema",
    "manifest_to_dict",
    "progress",
    "resolve_path",
    "save_manifest",
    "sha256_file",
    "validate_manifest",
    "write_json_schema",
]
