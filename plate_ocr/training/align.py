"""Frame targets read off a clean plate's ink: a framewise warm start for CTC.

CTC first learns to emit blanks everywhere, and a CRNN sits on that plateau for hundreds of
steps before it finds where the characters are. A clean plate says where they are: its dark
columns span the characters, and a plate's characters share that span about equally. Each
character's frames are the ones nearest the centre of its share, every other frame is blank:
one valid CTC path (a blank always separates two characters, repeated or not), which a
cross-entropy per frame teaches from the first step (docs/experiments.md, "Time to accuracy").
"""

import tensorflow as tf

from plate_ocr.training import ctc

# Pixels darker than this are ink: plates are dark characters on a light background.
INK_BELOW = 128


def frame_targets(images: tf.Tensor, labels: tf.Tensor, steps: int, blank: int) -> tf.Tensor:
    """The class of each time step of each plate, placed by the ink.

    Args:
      images: [B, H, W] pixel values (uint8 or float) of clean plates.
      labels: int [B, L] alphabet indices, records.PAD past the end of a shorter plate.
      steps: time steps of the logits (each covers W / steps columns).
      blank: the blank class.
    Returns:
      int32 [B, steps]: character k on the frame nearest the centre of the k-th of n equal
      shares of the ink's columns (n: the plate's characters) and on the frames less than a
      quarter of a share from it, the blank elsewhere. Where a share is wider than two frames
      (6 columns against 4 for this project's tightest plates), a blank frame separates every
      two characters. A plate without ink is all blank.
    """
    width = images.shape[2]
    ink = tf.reduce_any(images < INK_BELOW, axis=1)
    columns = tf.range(width, dtype=tf.float32)
    left = tf.reduce_min(tf.where(ink, columns, float(width)), axis=1)
    right = tf.reduce_max(tf.where(ink, columns, -1.0), axis=1) + 1
    labels = tf.cast(labels, tf.int32)
    character = labels >= 0  # [B, L]
    count = tf.reduce_sum(tf.cast(character, tf.float32), axis=1)
    share = tf.maximum(right - left, 0.0) / tf.maximum(count, 1.0)
    centres = (left[:, None]
               + (tf.range(labels.shape[1], dtype=tf.float32) + 0.5) * share[:, None])
    frames = (tf.range(steps, dtype=tf.float32) + 0.5) * (width / steps)
    distance = tf.where(character[:, None, :],
                        tf.abs(frames[None, :, None] - centres[:, None, :]),
                        float("inf"))  # [B, steps, L]
    closest = tf.argmin(distance, axis=1, output_type=tf.int32)  # [B, L]: each centre's frame
    nearest_frame = tf.reduce_any((tf.range(steps)[None, :, None] == closest[:, None, :])
                                  & character[:, None, :], axis=2)
    near = tf.reduce_any(distance < share[:, None, None] / 4, axis=2)
    on_character = (near | nearest_frame) & (share > 0)[:, None]
    nearest = tf.gather(labels, tf.argmin(distance, axis=2, output_type=tf.int32), batch_dims=1)
    return tf.where(on_character, nearest, blank)


def frame_loss(images: tf.Tensor, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per plate: the cross-entropy of the logits [B, T, classes] against frame_targets,
    averaged over the time steps. float32 [B]."""
    targets = frame_targets(images, labels, logits.shape[1], ctc.blank_index(logits.shape[-1]))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), axis=1)
