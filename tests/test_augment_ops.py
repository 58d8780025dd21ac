"""augment_ops: the augmentation as TF ops, on plates composed from the glyph atlas."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from plate_ocr import augment, records, render_source, writer

ALL_ON = dataclasses.replace(augment.AugmentConfig(), **{
    f.name: 1.0 for f in dataclasses.fields(augment.AugmentConfig) if f.name.endswith("_prob")})
SEED = tf.constant([3, 4], tf.int64)


@pytest.fixture(scope="module")
def inks(tiny_records) -> tuple[tf.Tensor, int]:
    """The ink of 256 rendered plates of the tiny records, and their margin."""
    info = records.read_info(tiny_records)
    atlas = render_source.read_atlas(render_source.atlas_path(info, tiny_records))
    choices = render_source.draw_plates(atlas, 0, tf.constant(0, tf.int64))
    ink = render_source.compose_ink(atlas, {k: v[:256] for k, v in choices.items()})
    return ink, writer.style_from_info(info).spec.margin


def test_every_effect_off_gives_the_clean_plate(inks):
    ink, margin = inks
    plates = augment_ops_augment(ink, augment.CLEAN, SEED, margin)
    np.testing.assert_array_equal(plates, 255 - ink.numpy())


def augment_ops_augment(*args) -> np.ndarray:
    from plate_ocr import augment_ops
    plates = augment_ops.augment(*args).numpy()
    assert plates.dtype == np.uint8 and plates.shape == tuple(args[0].shape)
    return plates


def test_plates_are_a_pure_function_of_the_seed(inks):
    ink, margin = inks
    config = augment.AugmentConfig()
    first = augment_ops_augment(ink, config, SEED, margin)
    np.testing.assert_array_equal(first, augment_ops_augment(ink, config, SEED, margin))
    other = augment_ops_augment(ink, config, tf.constant([3, 5], tf.int64), margin)
    assert np.mean([not np.array_equal(a, b) for a, b in zip(first, other)]) > 0.9
    clean = 255 - ink.numpy()
    assert np.mean([not np.array_equal(a, b) for a, b in zip(first, clean)]) > 0.9


def test_warped_ink_stays_inside_the_frame(inks):
    from plate_ocr import augment_ops
    ink, margin = inks
    geometry = dataclasses.replace(augment.CLEAN, rotate_prob=1.0, shear_prob=1.0,
                                   perspective_prob=1.0)
    uniform = {name: tf.random.stateless_uniform([ink.shape[0]], seed=[i, 1])
               for i, name in enumerate(augment.DRAWS)}
    jitter = tf.random.stateless_uniform([ink.shape[0], 4, 2], seed=[9, 9], minval=-1.0)
    warped = augment_ops.warp(tf.cast(ink, tf.float32), uniform, jitter, geometry,
                              margin).numpy()
    moved = [not np.allclose(a, b) for a, b in zip(warped, ink.numpy())]
    assert np.mean(moved) > 0.8  # most warps fit the frame at some scale
    inked = warped > 0.5
    assert not inked[:, :margin].any() and not inked[:, -margin:].any()
    assert not inked[:, :, :margin].any() and not inked[:, :, -margin:].any()
    # The ink is moved, not lost: its total changes only as much as a perspective of the
    # box's area (corners moved by up to a tenth of its height) allows.
    ratio = warped.sum(axis=(1, 2)) / ink.numpy().astype(float).sum(axis=(1, 2))
    assert 0.5 < ratio.min() and ratio.max() < 2


def test_thickening_keeps_counters_and_gaps_open(inks):
    from test_augment import open_pixels
    ink, margin = inks
    clean = ink.numpy()
    stroked = 255 - augment_ops_augment(
        ink, dataclasses.replace(augment.CLEAN, stroke_prob=1.0), SEED, margin)
    thick = stroked.sum(axis=(1, 2)) > clean.sum(axis=(1, 2))
    assert 0.3 < thick.mean() < 0.7  # the others thinned
    assert (open_pixels(stroked, clean) >= open_pixels(clean, clean) / 3)[thick].all()


def test_the_background_stays_min_contrast_above_the_ink(inks):
    from test_augment import BLURRED, SHADED, contrasts, stroke_contrasts
    ink, margin = inks
    clean = 255 - ink.numpy()
    assert contrasts(clean, augment_ops_augment(ink, SHADED, SEED, margin)).min() >= 49
    assert stroke_contrasts(clean, augment_ops_augment(ink, BLURRED, SEED, margin)).min() >= 49


def test_every_effect_at_once_keeps_plates_distinct(inks):
    ink, margin = inks
    plates = augment_ops_augment(ink, ALL_ON, SEED, margin).astype(float)
    # Inverted, blurred, noisy, JPEG'd: still not flat.
    assert (plates.std(axis=(1, 2)) > 5).all()
