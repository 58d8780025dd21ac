"""The glyph atlas: the ink of every (face, size, character) of the training fonts in one file.

Plates composed from it by TF ops (render_source.py) can be rendered where Python cannot run,
on tf.data service workers. make_records writes it beside the records as one serialized
tf.train.Example (encoded without TensorFlow, like the records):

  cells     bytes  uint8 [glyphs, cell_height, cell_width]: a glyph's ink at the top left of
                   its cell (render.load_glyphs' bitmap), 0 elsewhere
  metrics   bytes  int32 [glyphs, 5]: ink height, ink width, ink left and top relative to the
                   pen on the baseline, pen advance in 1/64 pixel (FreeType's unit, so integer
                   arithmetic places glyphs exactly where render.render_plate does)
  families  bytes  int32 [families, 2]: first face and number of faces (faces in family order)
  labels    bytes  uint8 [training plates, plate_length]: the training labels, alphabet indices,
                   LABEL_END past the end of a plate shorter than plate_length
  and int64 scalars: the plate geometry and the ranges of PlateStyle (GEOMETRY).

Glyph of (face, size, character): (face * num_sizes + size - font_size_min) * alphabet_size
+ character.
"""

import hashlib
from typing import Sequence

import numpy as np

from plate_ocr.data import fonts, records, render

ATLAS_NAME = "glyph_atlas.example"
# The int64 scalars of the atlas, in this order.
GEOMETRY = ("height", "width", "margin", "spacing_min", "spacing_max", "num_faces", "num_sizes",
            "alphabet_size", "plate_length", "cell_height", "cell_width")
SUBPIXELS = 64  # advance units per pixel
LABEL_END = 255  # records.PAD as a uint8 label: no character (alphabets have fewer)


def build_atlas(families: Sequence[Sequence[fonts.Face]], style, labels: np.ndarray) -> bytes:
    """Draws every glyph and serializes the atlas.

    Args:
      families: the training faces grouped by family (fonts.group_by_family), as the writer
        samples them.
      style: the writer.PlateStyle.
      labels: the training labels as numbers.
    Returns:
      the serialized tf.train.Example.
    Raises:
      ValueError: a face's advance is not a whole number of 1/64 pixels.
    """
    faces = [face for family in families for face in family]
    sizes = range(style.font_size_min, style.font_size_max + 1)
    glyphs = [render.load_glyphs(face.path, size, style.alphabet)[char]
              for face in faces for size in sizes for char in style.alphabet]
    cell_height = max(glyph.ink.shape[0] for glyph in glyphs)
    cell_width = max(glyph.ink.shape[1] for glyph in glyphs)
    cells = np.zeros((len(glyphs), cell_height, cell_width), np.uint8)
    metrics = np.zeros((len(glyphs), 5), np.int32)
    for index, glyph in enumerate(glyphs):
        height, width = glyph.ink.shape
        cells[index, :height, :width] = glyph.ink
        advance = glyph.advance * SUBPIXELS
        if advance != round(advance):
            raise ValueError(f"an advance of {glyph.advance} pixels is not a multiple of "
                             f"1/{SUBPIXELS}")
        metrics[index] = height, width, glyph.left, glyph.top, round(advance)
    starts = np.cumsum([0] + [len(family) for family in families[:-1]])
    family_table = np.array([[start, len(family)] for start, family in zip(starts, families)],
                            np.int32)
    digits = np.array([records.padded_label(records.label_digits(number, style.alphabet,
                                                                 style.lengths),
                                            style.plate_length) for number in labels],
                      np.int64).reshape(-1, style.plate_length)
    digits = np.where(digits == records.PAD, LABEL_END, digits).astype(np.uint8)
    geometry = {"height": style.spec.height, "width": style.spec.width,
                "margin": style.spec.margin, "spacing_min": style.spacing_min,
                "spacing_max": style.spacing_max, "num_faces": len(faces),
                "num_sizes": len(sizes), "alphabet_size": len(style.alphabet),
                "plate_length": style.plate_length, "cell_height": cell_height,
                "cell_width": cell_width}
    values = {"cells": ("bytes", cells.tobytes()),
              "metrics": ("bytes", metrics.astype("<i4").tobytes()),
              "families": ("bytes", family_table.astype("<i4").tobytes()),
              "labels": ("bytes", digits.tobytes())}
    values.update({key: ("int64", geometry[key]) for key in GEOMETRY})
    return records.encode_features(values)


def write_atlas(output_dir: str, families: Sequence[Sequence[fonts.Face]], style,
                labels: np.ndarray) -> dict:
    """Writes the atlas under a temporary name, renamed once complete.

    Returns:
      {"name", "sha256", "bytes"} of the file.
    """
    data = build_atlas(families, style, labels)
    with records.whole_file(output_dir, ATLAS_NAME) as f:
        f.write(data)
    return {"name": ATLAS_NAME, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
