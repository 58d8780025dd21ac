"""augment: the one implementation of the augmentation, for the writer and the training stream."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from plate_ocr.data import augment, augment_config, fonts, records, writer
from plate_ocr.training import render_source

CONFIG = augment_config.AugmentConfig()
CLEAN = augment_config.CLEAN
ALL_ON = dataclasses.replace(CONFIG, **{
    f.name: 1.0 for f in dataclasses.fields(CONFIG) if f.name.endswith("_prob")})


@pytest.fixture(scope="module")
def inks(tiny_records) -> tuple[np.ndarray, int]:
    """The ink of 128 plates composed from the tiny records' atlas, and their margin."""
    info = records.read_info(tiny_records)
    atlas = render_source.read_atlas(render_source.atlas_path(info, tiny_records))
    choices = render_source.draw_plates(atlas, 0, tf.constant(0, tf.int64))
    ink = render_source.compose_ink(atlas, {k: v[:128] for k, v in choices.items()})
    return ink.numpy(), writer.style_from_info(info).spec.margin


def keys(count: int, seed: int = 0) -> np.ndarray:
    return augment.plate_keys(seed, "train", np.arange(count)).numpy()


def run(ink: np.ndarray, config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    plates, warped = augment.augment_with_ink(tf.constant(ink), config,
                                              tf.constant(keys(len(ink), seed)), 2)
    assert plates.dtype == tf.uint8 and plates.shape == ink.shape == warped.shape
    return plates.numpy(), warped.numpy()


def dilated(mask: np.ndarray, size: int) -> np.ndarray:
    grown = tf.nn.max_pool2d(tf.constant(mask[..., None], tf.float32), size, 1, "SAME")
    return grown.numpy()[..., 0] > 0


def box_level(plates: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Per plate: the median grey of a ring 2-4 pixels around the text (the box under it)."""
    ring = dilated(text, 9) & ~dilated(text, 5)
    return np.nanmedian(np.where(ring, plates, np.nan).reshape(len(plates), -1), axis=1)


def test_every_effect_off_gives_the_clean_plate(inks):
    ink, _ = inks
    plates, warped = run(ink, CLEAN)
    np.testing.assert_array_equal(plates, 255 - ink)
    sure = ink != 51  # coverage 0.2, the threshold itself, either way in float32
    np.testing.assert_array_equal(warped[sure], np.where(ink > 51, 0, 255)[sure])


def test_a_plate_is_a_pure_function_of_its_ink_and_key_in_any_batch(inks):
    ink, margin = inks
    together = augment.augment_plates(ink[:40], ALL_ON, keys(40), margin)
    np.testing.assert_array_equal(together, augment.augment_plates(ink[:40], ALL_ON, keys(40),
                                                                   margin))
    parts = [augment.augment_plates(ink[a:b], ALL_ON, keys(40)[a:b], margin)
             for a, b in ((0, 1), (1, 13), (13, 40))]
    np.testing.assert_array_equal(np.concatenate(parts), together)
    other = augment.augment_plates(ink[:40], ALL_ON, keys(40, seed=1), margin)
    assert (other != together).any(axis=(1, 2)).all()


@pytest.mark.parametrize("config", [CONFIG, ALL_ON], ids=["default", "all_on"])
def test_every_glyphs_ink_stays_inside_the_frame(inks, config):
    ink, margin = inks
    _, warped = run(ink, config)
    text = warped < 128
    assert text.sum(axis=(1, 2)).min() > 0.2 * (ink > 128).sum(axis=(1, 2)).min()
    # The warp's bilinear edge may reach half a pixel into the margin, never the frame.
    edge = margin - 1
    assert not text[:, :edge].any() and not text[:, -edge:].any()
    assert not text[:, :, :edge].any() and not text[:, :, -edge:].any()


def test_elastic_bends_each_plates_glyphs_and_keeps_their_ink_in_the_frame(inks):
    ink, _ = inks
    bent, warped = run(ink, dataclasses.replace(CLEAN, elastic_prob=1.0))
    inked, bent_ink = ink > 128, bent < 128
    changed = (inked != bent_ink).sum(axis=(1, 2)) / inked.sum(axis=(1, 2))
    assert np.median(changed) > 0.1  # the strokes moved: other shapes, not the font's
    # A smooth displacement, no loss of ink: about the same amount of ink (where it
    # compresses a thin stroke it thins it), its centre moved by about a pixel (a few of the
    # displacement's deviations at most), nothing on the frame's edge.
    mass = bent_ink.sum(axis=(1, 2)) / inked.sum(axis=(1, 2))
    assert 0.9 < np.median(mass) < 1.1 and 0.5 < mass.min() and mass.max() < 1.6
    columns = np.arange(ink.shape[2])
    centre = lambda mask: (mask.sum(axis=1) * columns).sum(axis=1) / mask.sum(axis=(1, 2))
    shift = np.abs(centre(bent_ink) - centre(inked))
    assert np.median(shift) < 1.0 and shift.max() < 4 * CONFIG.elastic
    assert not bent_ink[:, [0, -1]].any() and not bent_ink[:, :, [0, -1]].any()
    assert (warped[bent_ink] < 128).all()  # the frame targets follow the bend


def test_each_character_moves_its_own_way_and_keeps_its_ink(inks):
    ink, _ = inks
    inked = 255 - ink < 128  # dark on the clean plate

    def moved(**ranges):
        config = dataclasses.replace(CLEAN, glyph_prob=1.0, glyph_rotate_degrees=0.0,
                                     glyph_scale=0.0, glyph_shift=0.0)
        plates, warped = run(ink, dataclasses.replace(config, **ranges))
        assert (warped[plates < 128] < 128).all()  # the frame targets follow the characters
        return plates < 128

    def rows(mask):  # the height of the line of text, per plate
        present = mask.any(axis=2)
        return present.shape[1] - np.argmax(present[:, ::-1], axis=1) - np.argmax(present, axis=1)

    def mass(mask):
        return mask.sum(axis=(1, 2)) / inked.sum(axis=(1, 2))
    # Nothing to draw: the plate as it was, but for pixels at the threshold (the identity,
    # computed in floats, can move the ink by a rounding error).
    assert ((moved() != inked).sum(axis=(1, 2)) <= 0.01 * inked.sum(axis=(1, 2))).all()
    # Baselines moved each their own way: the line grows taller, each character keeps its ink
    # (a translation; a sub-pixel one spreads a hairline over two pixels, both lighter).
    shifted = moved(glyph_shift=0.12)
    assert np.median(rows(shifted) / rows(inked)) > 1.05
    assert 0.85 < np.median(mass(shifted)) < 1.15 and mass(shifted).min() > 0.4
    # Turned and resized each about its own centre: other shapes, the ink's amount kept.
    turned = moved(glyph_rotate_degrees=20.0, glyph_scale=0.25)
    assert np.median((turned != inked).sum(axis=(1, 2)) / inked.sum(axis=(1, 2))) > 0.3
    assert 0.7 < np.median(mass(turned)) < 1.4 and mass(turned).min() > 0.3


def test_one_way_characters_turn_only_their_way():
    # A bar per plate, one character: its top leans right of its bottom when turned clockwise.
    ink = np.zeros([64, 64, 128], np.uint8)
    ink[:, 16:48, 62:66] = 255
    config = dataclasses.replace(CLEAN, glyph_prob=1.0, glyph_rotate_degrees=25.0,
                                 glyph_scale=0.0, glyph_shift=0.0)

    def lean(ways):  # per plate: the ink's mean column in its top rows less its bottom rows'
        plates, _ = augment.augment_with_ink(tf.constant(ink), config, tf.constant(keys(64)),
                                             2, None if ways is None else tf.constant(ways))
        dark = plates.numpy() < 128
        rows = np.flatnonzero(dark.any(axis=(0, 2)))
        columns = np.arange(128)

        def centre(band):
            mask = dark[:, band].any(axis=1)
            return (mask * columns).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
        return centre(slice(rows[0], rows[0] + 6)) - centre(slice(rows[-1] - 5, rows[-1] + 1))
    clockwise, anticlockwise = lean(np.ones([64, 1])), lean(-np.ones([64, 1]))
    either = lean(None)
    assert (clockwise > -0.5).all() and (clockwise > 2).mean() > 0.6
    assert (anticlockwise < 0.5).all() and (anticlockwise < -2).mean() > 0.6
    assert (either > 2).mean() > 0.25 and (either < -2).mean() > 0.25
    np.testing.assert_array_equal(either, lean(np.zeros([64, 5])))  # no one-way character
    # Two runs for a one-character label: which is the character is not known, so no turn.
    assert (np.abs(lean(np.ones([64, 2]))) < 0.5).all()
    # A one-character label ended by PAD (plates of several lengths): one run, one character.
    past_the_end = np.full([64, 4], augment_config.NO_CHARACTER)
    np.testing.assert_array_equal(
        lean(np.concatenate([np.ones([64, 1]), past_the_end], axis=1)), clockwise)


def test_a_one_and_a_seven_turn_each_the_way_that_keeps_them_apart():
    ways = CONFIG.turn_ways("0123456789")
    assert ways[1] == -1 and ways[7] == 1 and set(ways[:1] + ways[2:7] + ways[8:10]) == {0}
    assert len(ways) == 11 and ways[records.PAD] == augment_config.NO_CHARACTER


@pytest.mark.parametrize("effect", ["speckle_prob", "scratch_prob"])
def test_speckle_and_scratches_mark_the_plate_not_the_frame_targets(inks, effect):
    ink, _ = inks
    plates, warped = run(ink, dataclasses.replace(CLEAN, **{effect: 1.0}))
    marked = (plates < 128) & (ink < 20)  # dark pixels away from every stroke
    assert (marked.sum(axis=(1, 2)) >= 10).mean() > 0.9
    sure = ink != 51
    np.testing.assert_array_equal(warped[sure], np.where(ink > 51, 0, 255)[sure])


def test_text_scaled_up_thins_as_much_as_text_at_its_size(inks):
    ink, _ = inks

    def thinned_share(scale):  # per thinned plate: its ink against the same plate unstroked
        sized = dataclasses.replace(CLEAN, scale_prob=1.0, scale_min=scale, scale_max=scale)
        plain, _ = run(ink, sized)
        stroked, _ = run(ink, dataclasses.replace(sized, stroke_prob=1.0))
        share = ((255 - stroked.astype(float)).sum(axis=(1, 2))
                 / (255 - plain.astype(float)).sum(axis=(1, 2)))
        return np.median(share[share < 1])  # the half of the plates thinned (the rest grew)
    # One step of half a pixel each side takes a smaller share of strokes scaled 1.65x than of
    # strokes at their size; from 1.7x and 2.4x more steps take a like share again: large
    # text gets hairline strokes too.
    at_size, one_step, three_steps = thinned_share(1.0), thinned_share(1.65), thinned_share(2.6)
    assert three_steps < one_step and three_steps < at_size + 0.15


def test_text_scaled_up_keeps_edges_as_crisp_as_text_at_its_size(inks):
    ink, _ = inks

    def edge_share(scale, sharpen):  # pixels between ink and box, per pixel of ink or edge
        sized = dataclasses.replace(CLEAN, scale_prob=1.0, scale_min=scale, scale_max=scale,
                                    sharpen_prob=sharpen)
        plates, _ = run(ink, sized)
        return ((plates > 40) & (plates < 215)).sum() / (plates < 215).sum()
    at_size, soft, sharpened = edge_share(1.0, 1.0), edge_share(3.0, 0.0), edge_share(3.0, 1.0)
    # Bilinear scaling (3x, shrunk to fit the frame) widens the ramp of grey at every edge;
    # sharpened, it is no wider than at the text's size.
    assert soft > 1.3 * at_size
    assert sharpened < at_size
    assert edge_share(1.0, 0.0) == at_size  # text at its size is left as it is


def test_wear_takes_holes_out_of_the_ink_not_out_of_the_frame_targets(inks):
    ink, _ = inks
    worn, warped = run(ink, dataclasses.replace(CLEAN, wear_prob=1.0))
    share = (255 - worn.astype(float)).sum(axis=(1, 2)) / ink.astype(float).sum(axis=(1, 2))
    assert 0.8 < np.median(share) < 0.98 and share.min() > 0.5
    np.testing.assert_array_equal(warped, run(ink, CLEAN)[1])


def test_a_pattern_of_waves_shades_the_plate_around_the_text(inks):
    ink, _ = inks
    plates, _ = run(ink, dataclasses.replace(CLEAN, pattern_prob=1.0, contrast_prob=1.0))
    away = ~dilated(ink > 0, 5)
    spread = np.array([plate[mask].std() for plate, mask in zip(plates, away)])
    flat, _ = run(ink, dataclasses.replace(CLEAN, contrast_prob=1.0))
    assert np.array([plate[mask].std() for plate, mask in zip(flat, away)]).max() < 0.5
    assert np.median(spread) > 0.25 * CONFIG.pattern


def test_the_wide_distribution_varies_text_size_and_position(inks):
    ink, _ = inks
    _, warped = run(ink, CONFIG)
    rows = (warped < 128).any(axis=2)
    heights = rows.shape[1] - np.argmax(rows[:, ::-1], axis=1) - np.argmax(rows, axis=1)
    clean_heights = (ink > 128).any(axis=2).sum(axis=1)
    # The records' digits are 13-18 px high: augmented ones reach well beyond both ends.
    assert heights.min() <= 0.75 * np.median(clean_heights)
    assert np.percentile(heights, 95) > 1.5 * np.percentile(clean_heights, 95)


def test_the_ink_keeps_its_contrast_with_the_box_under_shading_and_blur(inks):
    ink, _ = inks
    # Box and ink levels that may meet (100-255 and 0-100), then shading and blur.
    shaded = dataclasses.replace(CLEAN, contrast_prob=1.0, gradient_prob=1.0, texture_prob=1.0,
                                 blur_prob=1.0, background_min=100)
    plates, warped = run(ink, shaded)
    no_floor, _ = run(ink, dataclasses.replace(shaded, min_contrast=0.0))

    def contrasts(images):
        # The box around the strokes (a ring 2-4 pixels out: gradient and texture vary across
        # the plate) against the strokes' darkest pixel.
        text = warped < 128
        return box_level(images, text) - np.where(text, images, 255).min(axis=(1, 2))
    assert contrasts(plates).min() >= CONFIG.min_contrast - 5  # rounding, texture in the ring
    # Without the floor, gradient and texture sink the background towards the ink.
    assert contrasts(no_floor).min() < CONFIG.min_contrast - 10


def test_light_digits_on_a_dark_box_on_another_page(inks):
    ink, _ = inks
    config = dataclasses.replace(CLEAN, invert_prob=1.0, box_prob=1.0, contrast_prob=1.0)
    plates, warped = run(ink, config)
    text = warped < 128
    ink_level = np.where(text, plates, 0).max(axis=(1, 2))
    corners = plates[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (ink_level > 100).all()  # light digits: the ink was 0..100 before the inversion
    # The box's edges show: a corner of the page is 40 grey levels from the box under the text.
    far = np.abs(corners.astype(float) - box_level(plates, text)[:, None]).max(axis=1)
    assert (far >= 35).mean() > 0.5


def test_every_effect_at_once_still_shows_the_digits(inks):
    ink, _ = inks
    plates, warped = run(ink, ALL_ON)
    text = warped < 128
    around = box_level(plates, text)
    for plate, mask, level in zip(plates.astype(float), text, around):
        # The strokes' most ink-like tenth and the box around them differ clearly, in either
        # polarity.
        strokes = plate[mask]
        extreme = np.percentile(strokes, 90 if np.median(strokes) > level else 10)
        assert abs(extreme - level) > 15


def test_the_writer_augments_with_this_implementation(faces):
    families = fonts.group_by_family(faces["train"])
    style = writer.PlateStyle(augment=CONFIG)
    rngs = [writer.plate_rng(0, "test_aug", index) for index in range(12)]
    made = writer.make_plates(list(range(12)), families, style, rngs, augmented=True)
    clean_rngs = [writer.plate_rng(0, "test_aug", index) for index in range(12)]
    clean = writer.make_plates(list(range(12)), families, style, clean_rngs)
    # The plate's key is its generator's next draw after rendering.
    plate_keys = np.stack([rng.integers(2 ** 62, size=2) for rng in clean_rngs])
    ways = np.array(CONFIG.turn_ways(style.alphabet))[np.array([d for _, d, *_ in clean])]
    expected = augment.augment_plates(255 - np.stack([image for image, *_ in clean]), CONFIG,
                                      plate_keys, style.spec.margin, ways)
    np.testing.assert_array_equal(np.stack([image for image, *_ in made]), expected)


def test_the_training_stream_augments_each_plate_from_its_own_key(tiny_records):
    info = records.read_info(tiny_records)
    path = render_source.atlas_path(info, tiny_records)
    images, labels, ink = next(iter(render_source.chunk_plates(
        path, 3, tf.constant(2, tf.int64), 64, 128, CONFIG, clean_fraction=0.25,
        alphabet=info["alphabet"]).batch(64)))
    atlas = render_source.read_atlas(path)
    choices = render_source.draw_plates(atlas, 3, tf.constant(2, tf.int64))
    clean = 255 - render_source.compose_ink(atlas, {k: v[:64] for k, v in choices.items()})
    plate_keys = augment.plate_keys(3, "train", 2 * render_source.CHUNK + np.arange(64))
    ways = tf.gather(CONFIG.turn_ways(info["alphabet"]), choices["label"][:64])
    expected, warped = augment.augment_with_ink(255 - clean, CONFIG, plate_keys, 2, ways)
    kept = (images.numpy() == clean.numpy()).all(axis=(1, 2))
    assert 0.15 < kept.mean() < 0.35  # the clean fraction, by plate number
    np.testing.assert_array_equal(images.numpy()[~kept], expected.numpy()[~kept])
    np.testing.assert_array_equal(ink.numpy()[~kept], warped.numpy()[~kept])
    np.testing.assert_array_equal(ink.numpy()[kept], clean.numpy()[kept])
