"""Reading and writing manifest files (YAML or JSON by suffix), schema-checked with errors naming file and key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medseg.configfile import format_validation_error, read_mapping
from medseg.data.manifest.schema import MANIFEST_SUFFIXES, SCHEMA_VERSION, Manifest, ManifestSchemaError
from medseg.errors import ConfigError
from medseg.io.atomic import write_atomically
from medseg.jsonable import to_json_types

__all__ = ["load_manifest", "manifest_to_dict", "save_manifest"]


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"a manifest must end in {', '.join(MANIFEST_SUFFIXES)}", path)
    return suffix


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and schema-check a manifest (YAML or JSON by suffix); errors name the file and the key."""
    path = Path(path)
    _check_suffix(path)
    data = read_mapping(path, "manifest")
    if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ConfigError(f"unsupported manifest version {data.get('version')!r} (this medseg reads version "
                          f"{SCHEMA_VERSION})", path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestSchemaError([format_validation_error(error, Manifest) for error in exc.errors()],
                                  path) from None


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """Plain data in schema order; unset provenance fields and empty `label_maps` left out, `null` labels and
    splits kept.

    Metadata given as numpy scalars/arrays, tuples or paths becomes plain numbers, lists and strings.
    """
    data = manifest.model_dump(mode="python")
    data["provenance"] = {key: value for key, value in data["provenance"].items() if value is not None}
    if not data["label_maps"]:
        del data["label_maps"]            # optional: written only when a label file has its own map
    for case in data["cases"]:
        case["metadata"] = to_json_types(case["metadata"])
    return data


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write `manifest` atomically as YAML or JSON (by suffix)."""
    import yaml

    path = Path(path)
    suffix = _check_suffix(path)
    if suffix == ".json":
        text = json.dumps(manifest_to_dict(manifest), indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(manifest_to_dict(manifest), sort_keys=False, allow_unicode=True, width=120)
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
