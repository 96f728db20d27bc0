"""THE label registry: values, names, abbreviations, TotalSegmentator names, DICOM codes, colours, mirror partners.

Every label convention of medseg comes from `configs/labels/*.yaml` through this module: lobe and lung maps
for training data, model cards, DICOM SEG coding, statistics row names, overlay colours, flip TTA groups and
left-right augmentation swaps. A model card carries its own `{value: name}` map; `from_names` turns it into a
`LabelMap` whose values follow the card while names, codes and colours come from the registry, so a model
with another label order gets the right codes and colours without any table to update.

Import stays light (PyYAML + pydantic); files are read once, on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.errors import ConfigError

__all__ = [
    "LABELS_DIR",
    "Coded",
    "Label",
    "LabelMap",
    "find_label",
    "from_names",
    "label_map",
    "label_map_names",
    "resolve_label_map",
]

LABELS_DIR = Path(__file__).resolve().parent.parent / "configs" / "labels"
"""Where the label map files live (`configs/labels/` of the medseg checkout)."""

RGB = tuple[int, int, int]
_FALLBACK_COLOURS: tuple[RGB, ...] = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167),
                                      (230, 159, 0), (86, 180, 233), (240, 228, 66), (120, 120, 120))
"""Okabe-Ito colours for labels the registry does not know (cycled by value)."""


@dataclass(frozen=True)
class Coded:
    """A coded concept: code value, coding scheme designator (SCT, DCM, ...) and code meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Label:
    """One label of a label map. Codes are None for labels the registry does not know."""

    value: int
    name: str
    abbreviation: str | None = None
    display: str = ""
    totalsegmentator: str | None = None
    category: Coded | None = None
    type: Coded | None = None
    laterality: Literal["left", "right"] | None = None
    region: Coded | None = None
    colour: RGB = (128, 128, 128)
    mirror: str | None = None
    """Name of the structure this one becomes under a left-right flip (None: itself / none)."""
    part_of: str | None = None
    """The larger structure this one belongs to (a lobe's lung), for grouped statistics."""

    @property
    def short(self) -> str:
        """Abbreviation when there is one (LUL), else the name: statistics rows, overlay legends, Dice tables."""
        return self.abbreviation or self.name

    @property
    def laterality_code(self) -> Coded | None:
        """DICOM CID 244 laterality as a coded modifier, or None."""
        return _LATERALITY.get(self.laterality or "")

    def spellings(self) -> Iterator[str]:
        """Normalised names this label answers to: name, abbreviation, display name, TotalSegmentator name."""
        for text in (self.name, self.abbreviation, self.display, self.totalsegmentator):
            if text:
                yield _normalise(text)


_LATERALITY = {"right": Coded("24028007", "SCT", "Right"), "left": Coded("7771000", "SCT", "Left")}


@dataclass(frozen=True)
class LabelMap:
    """Labels by value (background 0 included when defined) and the name of the convention."""

    name: str
    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        names = [label.name for label in self.labels]
        if len(set(values)) != len(values) or len(set(names)) != len(names):
            pairs = ", ".join(f"{label.value}: {label.name}" for label in self.labels)
            raise ConfigError(f"label map {self.name!r} repeats a value or a name ({pairs})")

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def foreground(self) -> tuple[Label, ...]:
        return tuple(label for label in self.labels if label.value != 0)

    def __getitem__(self, value: int) -> Label:
        for label in self.labels:
            if label.value == int(value):
                return label
        raise KeyError(value)

    def get(self, value: int) -> Label | None:
        try:
            return self[value]
        except KeyError:
            return None

    def by_name(self, name: str) -> Label | None:
        """The label answering to `name` (medseg name, abbreviation, display or TotalSegmentator name)."""
        key = _normalise(name)
        return next((label for label in self.labels if key in label.spellings()), None)

    def names(self, *, background: bool = False) -> dict[int, str]:
        """{value: name}, as a model card or a manifest stores it."""
        return {label.value: label.name for label in self.labels if background or label.value}

    def short_names(self) -> dict[int, str]:
        """{value: abbreviation or name} of the foreground labels."""
        return {label.value: label.short for label in self.foreground}

    def colours(self) -> dict[int, tuple[str, RGB]]:
        """{value: (legend text, RGB)} of the foreground labels."""
        return {label.value: (label.short, label.colour) for label in self.foreground}

    def side(self, laterality: Literal["left", "right"]) -> list[int]:
        """Values of the labels on one side of the body."""
        return [label.value for label in self.foreground if label.laterality == laterality]

    def swap(self) -> dict[int, int]:
        """Label swap under a left-right flip: mutual mirror pairs only (RML, whose counterpart is part of LUL,
        keeps its value). Its own inverse by construction."""
        out = {}
        for label in self.foreground:
            partner = self.by_name(label.mirror) if label.mirror else None
            if partner is not None and partner.mirror and self.by_name(partner.mirror) is label:
                out[label.value] = partner.value
        return out

    def flip_groups(self, channels: int) -> tuple[list[int], dict[int, int]]:
        """Flip-TTA grouping of `channels` output classes: (group of each class, mirror group of each group).

        Lateral labels joined by mirror links form one family (RUL, RML and LUL; LLL and RLL); each family's
        right and left members are two groups that mirror each other. Background and labels without a side
        mirror themselves. Raises ConfigError when a side has no partner in the map.
        """
        parent = {label.value: label.value for label in self.foreground}

        def root(value: int) -> int:
            while parent[value] != value:
                value = parent[value]
            return value

        for label in self.foreground:
            partner = self.by_name(label.mirror) if label.mirror else None
            if partner is not None and partner.value != 0:
                parent[root(label.value)] = root(partner.value)
        group_of: dict[tuple[int, str | None], int] = {}
        groups: list[int] = []
        for value in range(channels):
            label = self.get(value)
            key = (-1 - value, None) if label is None or not label.laterality else (root(value), label.laterality)
            groups.append(group_of.setdefault(key, len(group_of)))
        mirror = {}
        for (family, side), group in group_of.items():
            if side is None:
                mirror[group] = group
                continue
            other = group_of.get((family, "left" if side == "right" else "right"))
            if other is None:
                members = [self[v].name for v in range(channels) if groups[v] == group]
                raise ConfigError(f"flip TTA: {', '.join(members)} ({side}) has no mirror partner in label map "
                                  f"{self.name!r}; set `mirror` in configs/labels or run without TTA")
            mirror[group] = other
        return groups, mirror

    def parts(self) -> dict[str, tuple[str, ...]]:
        """{whole: short names of its parts} for wholes (right_lung) whose every registry part is in this map."""
        wholes: dict[str, list[str]] = {}
        for label in self.foreground:
            if label.part_of:
                wholes.setdefault(label.part_of, []).append(label.name)
        out = {}
        for whole, members in sorted(wholes.items(), key=lambda item: _registered_value(item[0])):
            expected = {label.name for known in _registry().values() for label in known if label.part_of == whole}
            if expected <= set(members):
                out[whole] = tuple(self.by_name(name).short for name in members)  # type: ignore[union-attr]
        return out


# ------------------------------------------------------------------------------------------- the registry


def _registered_value(name: str) -> int:
    """A structure's value in the first map that defines it (orders wholes: right lung before left)."""
    found = find_label(name)
    return found.value if found is not None else 256


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(text).casefold()).strip("_")


class _CodedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(pattern=r"^[0-9A-Za-z.\-]+$")
    scheme: str
    meaning: str


class _LabelModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    abbreviation: str | None = None
    display: str = ""
    totalsegmentator: str | None = None
    category: str | None = None
    type: _CodedModel | None = None
    laterality: Literal["left", "right"] | None = None
    region: _CodedModel | None = None
    colour: tuple[int, int, int] | None = None
    mirror: str | None = None
    part_of: str | None = None

    @field_validator("colour")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and not all(0 <= c <= 255 for c in value):
            raise ValueError(f"colour must be three integers 0..255, got {list(value)}")
        return value


class _LabelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str
    description: str = ""
    categories: dict[str, _CodedModel] = Field(default_factory=dict)
    labels: dict[int, _LabelModel]

    @model_validator(mode="after")
    def _consistent(self) -> _LabelFile:
        names = {label.name for label in self.labels.values()}
        for value, label in self.labels.items():
            if not 0 <= value <= 255:
                raise ValueError(f"label value {value} is outside 0..255")
            if label.category is not None and label.category not in self.categories:
                raise ValueError(f"label {value}: category {label.category!r} is not under categories")
            if label.mirror is not None and label.mirror not in names:
                raise ValueError(f"label {value}: mirror {label.mirror!r} is not a label of this file")
            if value and label.type is not None and label.category is None:
                raise ValueError(f"label {value}: a coded type needs a category")
        return self


def _coded(model: _CodedModel | None) -> Coded | None:
    return None if model is None else Coded(model.value, model.scheme, model.meaning)


def _read_label_file(path: Path) -> LabelMap:
    from medseg.configfile import load_config

    spec = load_config(_LabelFile, path, "label map")
    labels = tuple(
        Label(value=value, name=item.name, abbreviation=item.abbreviation,
              display=item.display or item.name.replace("_", " ").capitalize(),
              totalsegmentator=item.totalsegmentator,
              category=_coded(spec.categories[item.category]) if item.category else None,
              type=_coded(item.type), laterality=item.laterality, region=_coded(item.region),
              colour=item.colour or _FALLBACK_COLOURS[value % len(_FALLBACK_COLOURS)], mirror=item.mirror,
              part_of=item.part_of)
        for value, item in sorted(spec.labels.items()))
    return LabelMap(spec.name, labels)


@cache
def _registry() -> dict[str, LabelMap]:
    if not LABELS_DIR.is_dir():
        raise ConfigError("the label registry folder is missing (medseg needs its configs/ folder: install "
                          "medseg from its checkout with `pip install -e .`)", LABELS_DIR)
    maps = {}
    for path in sorted(LABELS_DIR.glob("*.yaml")):
        found = _read_label_file(path)
        if found.name != path.stem:
            raise ConfigError(f"label map name {found.name!r} differs from its file name", path)
        maps[found.name] = found
    return maps


def label_map_names() -> list[str]:
    """Names of the registered label maps ("lobes", "lungs", ...)."""
    return sorted(_registry())


def label_map(name: str) -> LabelMap:
    """A registered label map by name, e.g. `label_map("lobes")`."""
    maps = _registry()
    key = str(name).lower()
    if key not in maps:
        raise ConfigError(f"unknown label map {name!r}; known: {', '.join(sorted(maps))} (configs/labels/)")
    return maps[key]


def find_label(name: str) -> Label | None:
    """The registered label answering to `name` in any label map (first map in name order wins)."""
    for known in _registry().values():
        found = known.by_name(name)
        if found is not None and found.value != 0:
            return found
    return None


def from_names(names: Mapping[Any, Any], *, name: str = "custom", where: Any = None) -> LabelMap:
    """A LabelMap with the values of `names` ({value: name}, e.g. a model card's labels) and everything else
    from the registry. Names the registry does not know keep their name and get a fallback colour and no
    codes (DICOM SEG export refuses them by name). A value 0 entry is background."""
    labels = []
    for raw_value, raw_name in sorted(((int(v), str(n)) for v, n in names.items()), key=lambda item: item[0]):
        if raw_value < 0 or raw_value > 255:
            raise ConfigError(f"label value {raw_value} ({raw_name!r}) is outside 0..255", where)
        known = None if raw_value == 0 else find_label(raw_name)
        if known is not None:
            labels.append(replace(known, value=raw_value))
        elif raw_value == 0:
            labels.append(Label(0, _normalise(raw_name) or "background", "BG", "Background"))
        else:
            labels.append(Label(raw_value, raw_name, display=raw_name,
                                colour=_FALLBACK_COLOURS[raw_value % len(_FALLBACK_COLOURS)]))
    try:
        return LabelMap(name, tuple(labels))
    except ConfigError as exc:
        raise ConfigError(str(exc), where) from None


def resolve_label_map(spec: str | Mapping[Any, Any] | LabelMap, where: Any = None) -> LabelMap:
    """A LabelMap from a registered name ("lobes"), a {value: name} mapping, or a LabelMap."""
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, str):
        return label_map(spec)
    if isinstance(spec, Mapping):
        return from_names(spec, where=where)
    raise ConfigError(f"a label map is a name ({', '.join(label_map_names())}) or a {{value: name}} mapping, "
                      f"got {type(spec).__name__}", where)
