"""Contact sheet of synthetic radiographs with their labels, for a quick visual check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medseg.io.atomic import atomic_path

__all__ = ["contact_sheet", "write_contact_sheet"]


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 4, tile: int = 320
                  ) -> Image.Image:
    """Thumbnails (uint8 greyscale arrays) in a grid, each with its caption in a strip underneath."""
    rows = max(1, -(-len(images) // columns))
    font = ImageFont.load_default()
    strip = 30
    sheet = Image.new("L", (columns * tile, rows * (tile + strip)), color=0)
    draw = ImageDraw.Draw(sheet)
    for n, (array, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (n % columns) * tile, (n // columns) * (tile + strip)
        sheet.paste(Image.fromarray(array).resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        lines = _wrap(caption, draw, font, tile - 6)
        for row, line in enumerate(lines[:2]):
            draw.text((x + 3, y + tile + 2 + 13 * row), line, fill=255, font=font)
    return sheet


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines


def write_contact_sheet(path: str | os.PathLike[str], images: Sequence[np.ndarray], captions: Sequence[str],
                        columns: int = 4, tile: int = 320) -> Path:
    """Write `contact_sheet(...)` as a PNG (atomically)."""
    sheet = contact_sheet(images, captions, columns, tile)
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return Path(path)
