"""Augmented plates: deterministic, all ink inside the frame, clean when every effect is off."""

import dataclasses

import numpy as np
import pytest

from plate_ocr import augment, fonts, records, render, writer

STYLE = writer.PlateStyle()
ALL_ON = dataclasses.replace(augment.AugmentConfig(), **{
    f.name: 1.0 for f in dataclasses.fields(augment.AugmentConfig) if f.name.endswith("_prob")})


def test_augmented_plates_are_a_pure_function_of_seed_split_and_index(faces):
    families = fonts.group_by_family(faces["train"])

    def plate(index, seed=0):
        return writer.make_plate(123, families, STYLE, writer.plate_rng(seed, "test_aug", index),
                                 augmented=True)[0]
    first = plate(5)
    assert first.shape == (64, 128) and first.dtype == np.uint8
    assert np.array_equal(first, plate(5))
    assert not np.array_equal(first, plate(6)) and not np.array_equal(first, plate(5, seed=1))


def test_every_effect_off_gives_the_clean_plate(faces):
    families = fonts.group_by_family(faces["train"])
    style = dataclasses.replace(STYLE, augment=augment.CLEAN)
    for index in range(20):
        clean = writer.make_plate(index, families, style, writer.plate_rng(0, "train", index))[0]
        plain = writer.make_plate(index, families, style, writer.plate_rng(0, "train", index),
                                  augmented=True)[0]
        assert np.array_equal(clean, plain)


# Grey levels, gradient and texture at their darkest; nothing that moves or smears the ink.
SHADED = dataclasses.replace(augment.CLEAN, contrast_prob=1.0, gradient_prob=1.0,
                             texture_prob=1.0, background_min=100, texture=40.0)
# Grey levels and two blur passes on a flat plate.
BLURRED = dataclasses.replace(augment.CLEAN, contrast_prob=1.0, blur_prob=1.0, blur_sigma=1.0)


def contrasts(clean: np.ndarray, shaded: np.ndarray) -> np.ndarray:
    """Per plate: darkest background pixel minus lightest ink pixel (full coverage)."""
    background = np.where(clean == 255, shaded, 255).min(axis=(1, 2)).astype(int)
    return background - np.where(clean == 0, shaded, 0).max(axis=(1, 2))


def stroke_contrasts(clean: np.ndarray, blurred: np.ndarray) -> np.ndarray:
    """Per plate on a flat background: how much darker than it the ink shows, weighted by
    the clean coverage; infinite on a white plate (the floor reached white: the ink is black
    or min_contrast away)."""
    coverage = (255 - clean.astype(float)) / 255
    background = blurred.max(axis=(1, 2), keepdims=True)
    darker = background - blurred.astype(float)
    shown = (coverage * darker).sum(axis=(1, 2)) / coverage.sum(axis=(1, 2))
    return np.where(background[:, 0, 0] == 255, np.inf, shown)


def plates_of(faces, config: augment.AugmentConfig, count: int = 60) -> np.ndarray:
    families = fonts.group_by_family(faces["train"])
    style = dataclasses.replace(STYLE, augment=config)
    return np.stack([writer.make_plate(index, families, style,
                                       writer.plate_rng(0, "test_aug", index), augmented=True)[0]
                     for index in range(count)])


@pytest.mark.parametrize("floor", [50.0, 0.0], ids=["floor", "no_floor"])
def test_the_background_stays_min_contrast_above_the_ink(faces, floor):
    clean = plates_of(faces, augment.CLEAN)
    shaded = contrasts(clean, plates_of(faces, dataclasses.replace(SHADED, min_contrast=floor)))
    blurred = stroke_contrasts(
        clean, plates_of(faces, dataclasses.replace(BLURRED, min_contrast=floor)))
    if floor:
        assert shaded.min() >= floor - 1  # rounding
        assert blurred.min() >= floor - 1
    else:  # the floor is what keeps them apart: without it the background sinks to the ink,
        # and blurred strokes fade
        assert (shaded <= 0).sum() >= 3
        assert (blurred < 50).sum() >= 3


@pytest.mark.parametrize("config", [augment.AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_plates_augmented_together_are_each_the_plate_augmented_alone(faces, config):
    families = fonts.group_by_family(faces["train"])
    style = dataclasses.replace(STYLE, augment=config)

    def plates(labels):  # labels 0..39 as plates 0..39 of the train split, made together
        rngs = [writer.plate_rng(0, "train", label) for label in labels]
        made = writer.make_plates(list(labels), families, style, rngs, augmented=True)
        return np.stack([image for image, *_ in made])
    alone = np.concatenate([plates([label]) for label in range(40)])
    # All 40 at once (with ALL_ON some share a JPEG quality: 40 draws of 71), then in chunks
    # of other sizes.
    np.testing.assert_array_equal(plates(range(40)), alone)
    np.testing.assert_array_equal(np.concatenate([plates(range(13)), plates(range(13, 40))]),
                                  alone)


def test_plates_of_one_jpeg_quality_coded_as_one_image_come_back_as_alone():
    plates = np.random.default_rng(0).integers(0, 256, (5, 64, 128), dtype=np.uint8)
    together = augment._jpeg(plates, 40)
    np.testing.assert_array_equal(together,
                                  np.concatenate([augment._jpeg(p[None], 40) for p in plates]))
    assert not np.array_equal(together, plates)


def test_every_effect_at_once_still_shows_the_digits(faces):
    families = fonts.group_by_family(faces["train"])
    style = dataclasses.replace(STYLE, augment=ALL_ON)
    for index in range(30):
        image = writer.make_plate(index, families, style, writer.plate_rng(0, "train", index),
                                  augmented=True)[0]
        # Ink and plate still differ clearly: the 5th and 95th percentiles are apart.
        low, high = np.percentile(image, [5, 95])
        assert high - low > 30, index


def test_records_hold_augmented_splits_of_test_and_validation_labels(write_records,
                                                                      read_examples, tmp_path):
    counts = {"train": 50, "val": 10, "test": 20, "heldout": 0, "test_aug": 8, "val_aug": 6}
    shards = {"train": 1, "val": 1, "test": 1, "heldout": 1, "test_aug": 1, "val_aug": 1}
    info = write_records(str(tmp_path), counts=counts, shards=shards)
    for split, base in (("test_aug", "test"), ("val_aug", "val")):
        assert info["splits"][split]["augmented"] and not info["splits"][base]["augmented"]
        clean = read_examples(records.split_files(info, str(tmp_path), base))
        augmented = read_examples(records.split_files(info, str(tmp_path), split))
        assert [e["text"] for e in augmented] == [e["text"] for e in clean[:counts[split]]]
        assert all(a["image"] != b["image"] for a, b in zip(augmented, clean))


def open_pixels(inks: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per plate: pixels under half coverage inside the clean ink's box (counters, gaps)."""
    def between_first_and_last(present):  # bool [N, size]
        return (np.cumsum(present, axis=1) > 0) & (np.cumsum(present[:, ::-1], axis=1) > 0)[:, ::-1]
    inside = (between_first_and_last(clean.any(axis=2))[:, :, None]
              & between_first_and_last(clean.any(axis=1))[:, None, :])
    return ((inks < 128) & inside).sum(axis=(1, 2))


def test_thickening_keeps_counters_and_gaps_open_and_thinning_keeps_the_strokes(faces):
    # The tightest plates: 18 px, no spacing, digits with counters, in every training face.
    inks = []
    for face in faces["train"]:
        glyphs = render.load_glyphs(face.path, 18, STYLE.alphabet)
        image, _ = render.render_plate([glyphs[c] for c in "80868"], 0, STYLE.spec,
                                       np.random.default_rng(0))
        inks.append(255 - image)
    inks = np.stack(inks)
    draws = augment._draw(augment.CLEAN, np.random.default_rng(0), *inks.shape[1:])
    thick, thin = inks.copy(), inks.copy()
    augment._stroke(thick, [draws._replace(stroke=1)] * len(inks))
    augment._stroke(thin, [draws._replace(stroke=-1)] * len(inks))
    assert (thick >= inks).all() and (thin <= inks).all()
    assert (thick.sum(axis=(1, 2)) > inks.sum(axis=(1, 2))).all()
    # A whole pixel more on each side closed all of them in a bold face (OSP DIN: none left).
    assert (open_pixels(thick, inks) >= open_pixels(inks, inks) / 3).all()
    # Thinning fades a hairline to half its coverage at most, never removes it.
    assert (thin >= inks // 2).all()
