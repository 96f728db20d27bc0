"""The manifest schema (version 1): pydantic models of a dataset manifest, and its JSON Schema.

A manifest is a YAML or JSON file listing a dataset's cases (image and label paths relative to the
manifest's folder), patient-level splits, the label map, sha256 checksums and provenance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from medseg.configfile import ConfigSchemaError
from medseg.io.atomic import write_atomically
from medseg.labels import label_map, label_map_names

__all__ = [
    "LOBE_LABELS",
    "MANIFEST_SUFFIXES",
    "SCHEMA_VERSION",
    "SPLITS",
    "CaseRecord",
    "Manifest",
    "ManifestSchemaError",
    "Provenance",
    "Split",
    "Task",
    "manifest_json_schema",
    "write_json_schema",
]

SCHEMA_VERSION = 1
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test"]
Task = Literal["segmentation", "classification"]

LOBE_LABELS: dict[int, str] = label_map("lobes").names(background=True)
"""The registry's lobe label map (`configs/labels/lobes.yaml`, lungmask convention), as a manifest stores it."""


def _label_value(value: Any) -> str | int | None:
    """A case's label entry: a file path (segmentation) or 0/1/null (classification)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected a file path (segmentation) or 0, 1 or null (classification), got {value!r}")


LabelValue = Annotated[
    str | int | None,
    PlainValidator(_label_value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(_Strict):
    """Where a dataset came from and what wrote its manifest."""

    source: str | None = Field(None, description="Source dataset name (and version), e.g. 'TotalSegmentator v2'.")
    generator: str | None = Field(None, description="Generator or importer that wrote the manifest.")
    generator_version: str | None = Field(None, description="Version of the generator (e.g. medseg's version).")
    seed: int | None = Field(None, description="Random seed (synthetic data, split assignment).")
    root: str | None = Field(None, description="Folder the dataset was imported from.")
    command: str | None = Field(None, description="Command line that wrote the manifest.")
    license: str | None = Field(None, description="Licence or data-use terms of the source.")
    url: str | None = Field(None, description="Where the source dataset can be obtained.")
    notes: str | None = Field(None, description="Free text: policies applied, caveats.")


class CaseRecord(_Strict):
    """One case: an image, its labels, its patient and split, and checksums of its files."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # `patient_id: 12345` is an id

    case_id: str = Field(min_length=1, description="Unique within the manifest.")
    patient_id: str = Field(min_length=1, description="Splits are patient-level: one patient, one split.")
    split: Split | None = Field(None, description="train, val, test, or null (unassigned).")
    image: str = Field(min_length=1, description="Image file or DICOM folder, relative to the manifest's folder.")
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Segmentation: name -> label file path. Classification: class -> 1, 0 or null (unknown/ignored).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form per-case metadata.")
    checksums: dict[str, Sha256Hex] = Field(
        default_factory=dict,
        description="Path (as written in this manifest; for a DICOM folder, each file in it) -> sha256 hex digest.",
    )


_LABEL_MAP_SCHEMA = {"anyOf": [
    {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
     "additionalProperties": {"type": "string", "minLength": 1}},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
]}


_FILE_LABEL_MAP_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1}, _LABEL_MAP_SCHEMA["anyOf"][0]]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest(_Strict):
    """A dataset manifest (schema version 1)."""

    version: Literal[1] = Field(SCHEMA_VERSION, description="Manifest schema version.")
    name: str = Field(min_length=1, description="Dataset name.")
    task: Task
    created: str = Field(default_factory=_now, description="ISO 8601 timestamp.")
    provenance: Provenance = Field(default_factory=Provenance)
    label_map: Annotated[dict[int, str] | list[str], WithJsonSchema(_LABEL_MAP_SCHEMA)] = Field(
        description="Segmentation: label value -> name (the label files' map unless label_maps names another). "
                    "Classification: list of class names (multi-label)."
    )
    label_maps: dict[str, Annotated[dict[int, str] | str, WithJsonSchema(_FILE_LABEL_MAP_SCHEMA)]] = Field(
        default_factory=dict,
        description="Segmentation: label file key (as in each case's labels, e.g. lungs) -> that file's label map, "
                    "a registered name (lobes, lungs: configs/labels/) or value -> name. Keys not listed use "
                    "label_map.")
    cases: list[CaseRecord] = Field(default_factory=list)

    @field_validator("created")
    @classmethod
    def _iso_timestamp(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
        return value

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_for_task(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if isinstance(value, Mapping):
            if task == "classification":
                raise ValueError("a classification label_map is a list of class names")
            return _int_label_map(value)
        if isinstance(value, list):
            if task == "segmentation":
                raise ValueError("a segmentation label_map maps label values to names, e.g. {0: background, 1: ...}")
            if not all(isinstance(name, str) and name for name in value):
                raise ValueError("class names must be non-empty strings")
            duplicates = sorted({name for name in value if value.count(name) > 1})
            if duplicates:
                raise ValueError(f"duplicate class names: {', '.join(duplicates)}")
            return value
        raise ValueError("expected a mapping (segmentation) or a list of class names (classification)")

    @field_validator("label_maps", mode="before")
    @classmethod
    def _file_label_maps(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("label_maps maps label file keys to label maps")
        if value and info.data.get("task") == "classification":
            raise ValueError("label_maps is for segmentation label files; classification uses label_map")
        out: dict[str, dict[int, str] | str] = {}
        for key, spec in value.items():
            if isinstance(spec, str):
                known = label_map_names()
                if spec not in known:
                    raise ValueError(f"label_maps.{key}: unknown label map {spec!r}; registered: {', '.join(known)}")
                out[str(key)] = spec
            elif isinstance(spec, Mapping):
                out[str(key)] = _int_label_map(spec)
            else:
                raise ValueError(f"label_maps.{key}: a registered name or a {{value: name}} mapping")
        return out

    def label_map_for(self, key: str) -> dict[int, str]:
        """{value: name} of the label files under `key` in each case's labels (background included)."""
        spec = self.label_maps.get(key)
        if spec is None:
            if not isinstance(self.label_map, dict):
                raise ValueError("a classification manifest has no label files")
            return dict(self.label_map)
        return label_map(spec).names(background=True) if isinstance(spec, str) else dict(spec)

    @property
    def class_names(self) -> list[str]:
        """Classification classes, or segmentation label names in label order."""
        if isinstance(self.label_map, list):
            return list(self.label_map)
        return [self.label_map[key] for key in sorted(self.label_map)]

    def split_counts(self) -> dict[str, int]:
        """Number of cases per split (`none` for unassigned), in train/val/test order."""
        counts = {split: 0 for split in SPLITS}
        for case in self.cases:
            key = case.split or "none"
            counts[key] = counts.get(key, 0) + 1
        return {key: n for key, n in counts.items() if n or key in SPLITS}


def _int_label_map(value: Mapping[Any, Any]) -> dict[int, str]:
    result: dict[int, str] = {}
    for key, name in value.items():
        try:
            number = int(key) if not isinstance(key, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0 or str(key).strip() != str(number):
            raise ValueError(f"label values must be non-negative integers, got {key!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"label {number}: the name must be a non-empty string")
        result[number] = name
    names = list(result.values())
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate label names: {', '.join(duplicates)}")
    return result


class ManifestSchemaError(ConfigSchemaError):
    """A manifest does not match the schema; `errors` holds one line per problem."""


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest model (committed as data_manifest/schema/manifest.schema.json)."""
    schema = Manifest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def write_json_schema(path: str | os.PathLike[str]) -> Path:
    """Write `manifest_json_schema()` to `path` (atomically)."""
    text = json.dumps(manifest_json_schema(), indent=2) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
