"""The warp of the ink box: all ink stays inside the frame's margin, for every face."""

import dataclasses

import numpy as np
import pytest

from plate_ocr import augment, render, warp, writer

STYLE = writer.PlateStyle()
# Every geometric effect on, at augment's default ranges: the same angle, shear and jitter
# draws as with every effect on (they come first from the plate's generator).
GEOMETRY = dataclasses.replace(augment.CLEAN, rotate_prob=1.0, shear_prob=1.0,
                               perspective_prob=1.0)


@pytest.mark.parametrize("size", [18, 25])
def test_warped_ink_stays_inside_the_frame_for_every_face(faces, size):
    margin = STYLE.spec.margin
    for number, face in enumerate(faces["train"] + faces["heldout"]):
        glyphs = render.load_glyphs(face.path, size, STYLE.alphabet)
        widest = max(glyphs.values(), key=lambda g: g.advance + g.ink.shape[1])
        rng = np.random.default_rng(number)
        image, _ = render.render_plate([widest] * 5, STYLE.spacing_max, STYLE.spec, rng)
        draws = augment._draw(GEOMETRY, rng, *image.shape)
        warped = warp.warp_inks((255 - image)[None], np.array([draws.angle]),
                                np.array([draws.shear]), draws.jitter[None], margin)[0]
        rows, cols = np.flatnonzero(warped.any(axis=1)), np.flatnonzero(warped.any(axis=0))
        # The clean plate keeps `margin` pixels; a warp that cannot keep them is not applied.
        assert rows[0] >= margin and cols[0] >= margin, face.name
        assert rows[-1] <= 63 - margin and cols[-1] <= 127 - margin, face.name
