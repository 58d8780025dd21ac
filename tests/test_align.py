"""align.frame_targets: frames placed by the ink of clean plates, one valid CTC path each."""

import numpy as np
import tensorflow as tf

from plate_ocr.data import records
from plate_ocr.serving import evaluate
from plate_ocr.training import align, ctc

BLANK = 10


def collapse(frames) -> list[int]:
    """CTC's rule: repeats merged, blanks dropped."""
    return [f for i, f in enumerate(frames) if f != BLANK and (i == 0 or frames[i - 1] != f)]


def test_targets_of_rendered_plates_are_their_labels_on_their_ink(tiny_records):
    batch = next(evaluate.read_split(tiny_records, "train", batch_size=64))
    labels = np.array([[int(c) for c in text] for text in batch["text"]])
    targets = align.frame_targets(tf.constant(batch["image"]), tf.constant(labels), 64,
                                  BLANK).numpy()
    assert targets.shape == (len(labels), 64)
    ink = (batch["image"] < align.INK_BELOW).any(axis=1).reshape(len(labels), 64, 2).any(2)
    for plate_targets, label, plate_ink in zip(targets, labels, ink):
        # Repeated digits too: a blank frame always separates two characters.
        assert collapse(plate_targets) == list(label)
        characters = plate_targets != BLANK
        inked = np.flatnonzero(plate_ink)
        assert characters.any() and inked[0] <= np.flatnonzero(characters)[0]
        assert np.flatnonzero(characters)[-1] <= inked[-1]
    # Logits that follow the targets are a confident CTC reading of the labels.
    logits = 20.0 * tf.one_hot(targets, BLANK + 1)
    assert np.all(ctc.per_example_loss(tf.constant(labels, tf.int32), logits).numpy() < 1e-3)


def test_targets_sit_at_the_centres_of_the_inks_fifths():
    image = np.full((1, 8, 40), 255, np.uint8)
    image[0, 2:6, 5:35] = 0  # ink over columns 5..34: fifths of 6 columns, centres 8, 14, ..
    targets = align.frame_targets(tf.constant(image), tf.constant([[1, 1, 2, 3, 4]]), 20,
                                  BLANK).numpy()[0]
    # Frames of 2 columns (centres 1, 3, ..): those less than 6 / 4 columns from a centre.
    expected = [BLANK] * 20
    for k, frames in enumerate(((3, 4), (6, 7), (9, 10), (12, 13), (15, 16))):
        for frame in frames:
            expected[frame] = [1, 1, 2, 3, 4][k]
    assert targets.tolist() == expected
    # Fifths narrower than a frame (not met in the records): frames over the ink carry the
    # character nearest them (the first on a tie), in order; no frame outside the ink does.
    narrow = np.full((1, 8, 40), 255, np.uint8)
    narrow[0, :, 10:15] = 0
    targets = align.frame_targets(tf.constant(narrow), tf.constant([[1, 2, 3, 4, 5]]), 20,
                                  BLANK).numpy()[0]
    assert collapse(targets) == [1, 3, 5]
    assert np.flatnonzero(targets != BLANK).tolist() == [5, 6, 7]
    blank_plate = np.full((1, 8, 40), 255, np.uint8)
    assert np.all(align.frame_targets(tf.constant(blank_plate), tf.constant([[1, 2, 3, 4, 5]]),
                                      20, BLANK).numpy() == BLANK)


def test_a_shorter_label_ended_by_pad_is_placed_as_that_many_characters(tiny_records):
    batch = next(evaluate.read_split(tiny_records, "train", batch_size=32))
    images = tf.constant(batch["image"])
    for length in (1, 3, 4):
        labels = np.array([[int(c) for c in text[:length]] for text in batch["text"]])
        padded = np.pad(labels, [(0, 0), (0, 5 - length)], constant_values=records.PAD)
        np.testing.assert_array_equal(
            align.frame_targets(images, tf.constant(padded), 64, BLANK).numpy(),
            align.frame_targets(images, tf.constant(labels), 64, BLANK).numpy())


def test_frame_loss_is_low_on_the_targets_and_high_elsewhere():
    image = np.full((2, 8, 40), 255, np.uint8)
    image[:, 2:6, 5:35] = 0
    labels = tf.constant([[1, 1, 2, 3, 4], [1, 1, 2, 3, 4]])
    targets = align.frame_targets(tf.constant(image), labels, 20, BLANK)
    right = 20.0 * tf.one_hot(targets, BLANK + 1)
    wrong = 20.0 * tf.one_hot(tf.fill([2, 20], BLANK), BLANK + 1)
    assert np.all(align.frame_loss(image, labels, right).numpy() < 1e-6)
    assert np.all(align.frame_loss(image, labels, wrong).numpy() > 1.0)
    # Dense ops only: XLA compiles it (GPUs and TPUs train with --jit_compile or under XLA).
    compiled = tf.function(align.frame_loss, jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant(image), labels, wrong),
                               align.frame_loss(image, labels, wrong), rtol=1e-6)
