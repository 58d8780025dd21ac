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


def _end_heights(warped: np.ndarray) -> tuple[int, int]:
    """Rows of ink in the first and the last fifth of the ink's columns."""
    cols = np.flatnonzero(warped.any(axis=0))
    fifth = (cols[-1] + 1 - cols[0]) // 5

    def height(part):
        rows = np.flatnonzero(part.any(axis=1))
        return rows[-1] + 1 - rows[0]
    return height(warped[:, cols[0]:cols[0] + fifth]), height(warped[:, cols[-1] + 1 - fifth:])


@pytest.mark.parametrize("ops", ["numpy", "tf"])
def test_the_perspective_keeps_the_far_digits_two_thirds_as_tall(faces, ops):
    # The widest range the draws allow: the left edge stretched, the right one squeezed.
    corners = np.array([[0, -1], [0, 1], [0, -1], [0, 1]], np.float32)[None]
    config = dataclasses.replace(augment.CLEAN, perspective_prob=1.0)
    glyphs = render.load_glyphs(faces["train"][0].path, 25, STYLE.alphabet)
    image, _ = render.render_plate([glyphs["8"]] * 5, 4, STYLE.spec, np.random.default_rng(0))
    ink = (255 - image)[None]
    if ops == "numpy":
        warped = warp.warp_inks(ink, np.zeros(1), np.zeros(1), corners * config.perspective,
                                STYLE.spec.margin)[0] > 127
    else:
        import tensorflow as tf
        from plate_ocr import augment_ops
        uniform = {name: tf.zeros([1]) for name in augment.DRAWS}
        warped = augment_ops.warp(tf.cast(ink, tf.float32), uniform, tf.constant(corners),
                                  config, STYLE.spec.margin)[0].numpy() > 127
    near, far = _end_heights(warped)
    clean_near, clean_far = _end_heights(ink[0] > 127)
    assert clean_near == clean_far
    # A tenth of the box's height each way at the corners: the near end ~1.16x as tall, the
    # far end ~0.84x (a pixel either way for the sampling).
    assert abs(near - 1.16 * clean_near) <= 1.5 and abs(far - 0.84 * clean_far) <= 1.5
