"""Render one plate: text, glyphs of one face and size, spacing, rng -> uint8 [height, width].

Glyphs are drawn once per (face, size) with PIL and cached as ink bitmaps; a plate is then a
few numpy maxima, which is what makes thousands of plates per second per core possible.
"""

import dataclasses
import functools
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclasses.dataclass(frozen=True)
class Glyph:
    """Ink of one character, placed relative to the pen on the baseline."""

    ink: np.ndarray  # uint8 [h, w], 255 = full ink
    left: int  # ink box left edge minus pen x
    top: int  # ink box top minus baseline y (negative: above the baseline)
    advance: float  # pen advance in pixels


@dataclasses.dataclass(frozen=True)
class PlateSpec:
    """Geometry shared by every plate of a dataset."""

    height: int = 64
    width: int = 128
    margin: int = 2  # pixels of background kept around the ink on every side


@functools.lru_cache(maxsize=None)
def load_glyphs(font_path: str, size: int, alphabet: str) -> dict[str, Glyph]:
    """Draws every character of the alphabet in one face and size (cached per process)."""
    font = ImageFont.truetype(font_path, size)
    glyphs = {}
    for char in alphabet:
        left, top, right, bottom = font.getbbox(char, anchor="ls")
        image = Image.new("L", (max(right - left, 1), max(bottom - top, 1)), 0)
        ImageDraw.Draw(image).text((-left, -top), char, fill=255, font=font, anchor="ls")
        ink = np.asarray(image)
        # getbbox is the outline's box; trim it to the pixels that really carry ink.
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        ink = np.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        glyphs[char] = Glyph(ink, left + int(cols[0]), top + int(rows[0]), font.getlength(char))
    return glyphs


def _ink_offsets(glyphs: Sequence[Glyph], spacing: int) -> list[int]:
    """X of each glyph's ink box, relative to the first pen position."""
    offsets, pen = [], 0.0
    for glyph in glyphs:
        offsets.append(int(round(pen)) + glyph.left)
        pen += glyph.advance + spacing
    return offsets


def fit_spacing(glyphs: Sequence[Glyph], spacing: int, available: int) -> int:
    """The largest spacing <= `spacing` whose line of ink fits in `available` pixels.

    Raises:
      ValueError: when the glyphs would have to overlap completely (writer.check_fit keeps
        make_records from ever asking for less than --spacing_min).
    """
    def extent(s: int) -> int:
        offsets = _ink_offsets(glyphs, s)
        return (max(o + g.ink.shape[1] for o, g in zip(offsets, glyphs))
                - min(offsets))

    while extent(spacing) > available:
        # Each step of spacing moves the last glyph by len-1 pixels: jump close, then walk.
        over = extent(spacing) - available
        spacing -= max(1, over // max(len(glyphs) - 1, 1))
        if spacing < -max(g.ink.shape[1] for g in glyphs):
            raise ValueError(f"{len(glyphs)} glyphs do not fit in {available} pixels")
    return spacing


def render_plate(glyphs: Sequence[Glyph], spacing: int, spec: PlateSpec,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Draws dark glyphs on a light plate, at a random position with all ink inside the frame.

    Args:
      glyphs: the glyphs of the plate's text, in order.
      spacing: extra pixels between pen positions (reduced if the line would not fit).
      spec: plate size and margin.
      rng: the plate's own generator (position jitter).
    Returns:
      (uint8 [height, width] image, the spacing used).
    """
    spacing = fit_spacing(glyphs, spacing, spec.width - 2 * spec.margin)
    offsets = _ink_offsets(glyphs, spacing)
    x_min = min(offsets)
    x_max = max(o + g.ink.shape[1] for o, g in zip(offsets, glyphs))
    y_min = min(g.top for g in glyphs)
    y_max = max(g.top + g.ink.shape[0] for g in glyphs)
    if y_max - y_min > spec.height - 2 * spec.margin:
        raise ValueError(f"glyphs of {y_max - y_min} pixels do not fit a {spec.height}-pixel plate")
    x0 = int(rng.integers(spec.margin, spec.width - spec.margin - (x_max - x_min) + 1)) - x_min
    baseline = int(rng.integers(spec.margin, spec.height - spec.margin - (y_max - y_min) + 1)) - y_min
    ink = np.zeros((spec.height, spec.width), np.uint8)
    for offset, glyph in zip(offsets, glyphs):
        h, w = glyph.ink.shape
        x, y = x0 + offset, baseline + glyph.top
        np.maximum(ink[y:y + h, x:x + w], glyph.ink, out=ink[y:y + h, x:x + w])
    return 255 - ink, spacing
