"""CTC loss, decoding, the probability of a reading and plate metrics. The blank is the last
class everywhere.

Decoded labels are dense int32 [B, width] padded with -1: dense ops only, so decoding runs
inside a SavedModel signature, under XLA and in TFLite.
"""

import numpy as np
import tensorflow as tf

from plate_ocr.data import records

PAD = records.PAD  # after a shorter reading's (or label's) end


def blank_index(num_classes: int) -> int:
    """The blank class: the last one (classes 0..n-1 are the alphabet)."""
    return num_classes - 1


def per_example_loss(labels: tf.Tensor, logits: tf.Tensor, kernel: bool = False) -> tf.Tensor:
    """CTC loss per plate from raw logits (no softmax: ctc_loss normalizes itself).

    Args:
      labels: int32 [B, L], alphabet indices, a shorter label ended with PAD.
      logits: float32 [B, T, classes].
      kernel: compute it with TensorFlow's CTCLoss kernel (sparse labels), which also gives
        the gradient: forward and backward 5x faster on this CPU than the dense
        implementation (2.6 against 14 ms for a batch of 32), but a CPU op with no XLA or TPU
        kernel. Same loss and gradient (the tests compare them).
    Returns:
      float32 [B].
    """
    batch, steps = tf.shape(logits)[0], tf.shape(logits)[1]
    read = labels != PAD
    return tf.nn.ctc_loss(
        labels=_sparse(labels) if kernel else tf.where(read, labels, 0), logits=logits,
        label_length=None if kernel else tf.reduce_sum(tf.cast(read, tf.int32), axis=1),
        logit_length=tf.fill([batch], steps),
        logits_time_major=False, blank_index=blank_index(logits.shape[-1]))


def greedy_decode(logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Best class per step, repeats collapsed, blanks removed.

    Returns:
      (int32 [B, T] labels left-aligned and padded with PAD,
       float32 [B] confidence: the probability of the best path).
    """
    steps = logits.shape[1] or tf.shape(logits)[1]
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)
    previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    keep = (best != previous) & (best != blank_index(logits.shape[-1]))
    # Move kept steps to the left with a one-hot matmul (no ragged or sparse tensors).
    position = tf.cumsum(tf.cast(keep, tf.int32), axis=1) - 1
    placement = tf.one_hot(position, steps, dtype=tf.float32) * tf.cast(keep, tf.float32)[..., None]
    decoded = tf.einsum("bt,btj->bj", tf.cast(best - PAD, tf.float32), placement)
    decoded = tf.cast(tf.round(decoded), tf.int32) + PAD
    log_probs = tf.reduce_max(tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return decoded, tf.exp(tf.reduce_sum(log_probs, axis=1))


IMPOSSIBLE = -1e30  # the log-probability of a state no path reaches


def format_decode(logits: tf.Tensor, masks: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """The most probable path whose reading a plate format accepts (a Viterbi search).

    Args:
      logits: float [B, T, classes].
      masks: bool [A, N, classes - 1], a format's alternatives (plate_format.masks): reading
        k of alternative a may be class c where masks[a, k, c]; an alternative reads as many
        characters as it has positions with any class allowed (first ones first).
    Returns:
      (int32 [B, N] labels left-aligned and padded with PAD, float32 [B] the probability of
      that path).
    """
    masks = np.asarray(masks, bool)
    alternatives, positions, chars = masks.shape
    classes = logits.shape[-1]
    blank = blank_index(classes)
    if chars != blank:
        raise ValueError(f"the format has {chars} characters, the model {blank}")
    lengths = masks.any(axis=2).sum(axis=1)  # [A]
    # Each state carries its characters so far as numbers in base `chars`, `per` characters
    # to an int32 (TFLite divides no int64): reading k + 1 appends to number k // per. Five
    # digits are one number; 8 characters of 36, two.
    per = 1
    while per < positions and chars ** (per + 1) < 2 ** 31:
        per += 1
    numbers = -(-positions // per)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    steps, batch = tf.shape(logits)[1], tf.shape(logits)[0]
    rows = batch * alternatives  # each plate once per alternative: [B * A, ...] below
    start = np.full((positions + 1, classes), IMPOSSIBLE, np.float32)
    start[0, blank] = 0.0
    score = tf.tile(tf.constant(start)[None], [rows, 1, 1])  # [R, counts, classes]
    read = tf.zeros([rows, positions + 1, classes, numbers], tf.int32)
    allowed = tf.tile(tf.constant(masks), [batch, 1, 1])  # [R, N, chars]
    appends = tf.constant((np.arange(positions)[:, None] // per
                           == np.arange(numbers))[:, None, :])  # [N (count), 1, numbers]
    written = tf.range(blank)[None, :, None]  # [1, chars, 1]
    no_entry = tf.fill([rows, 1, blank], IMPOSSIBLE)

    def advance(t, score, read):
        step = tf.repeat(tf.gather(log_probs, t, axis=1), alternatives, axis=0)  # [R, classes]
        # The two best states of each count: a character enters after the best one that is
        # not itself (a repeat needs a blank in between); a blank follows the best one.
        top, previous = tf.math.top_k(score, 2)                         # [R, counts, 2]
        top_read = tf.gather(read, previous, axis=2, batch_dims=2)  # [R, counts, 2, numbers]
        repeat = previous[:, :-1, :1] == tf.range(blank)                # [R, N, chars]
        entry_score = tf.concat([no_entry, tf.where(
            allowed, tf.where(repeat, top[:, :-1, 1:], top[:, :-1, :1]), IMPOSSIBLE)], axis=1)
        before = tf.where(repeat[..., None], top_read[:, :-1, 1:], top_read[:, :-1, :1])
        entry_read = tf.concat([read[:, :1, :blank], tf.where(appends, before * blank + written,
                                                              before)], axis=1)
        enters = entry_score > score[:, :, :blank]
        score = tf.concat([tf.maximum(entry_score, score[:, :, :blank]) + step[:, None, :blank],
                           top[:, :, :1] + step[:, None, blank:]], axis=2)
        read = tf.concat([tf.where(enters[..., None], entry_read, read[:, :, :blank]),
                          top_read[:, :, :1]], axis=2)
        return t + 1, score, read

    # A while loop, not a Python one: 64 unrolled steps took 2 s to trace in every graph.
    _, score, read = tf.while_loop(lambda t, *_: t < steps, advance,
                                   (tf.constant(0), score, read))
    # Each alternative ends having read its length: [B, A * classes] scores of those states.
    ends = tf.tile(tf.constant(lengths, tf.int32), [batch])  # [R]
    final = tf.reshape(tf.gather(score, ends, axis=1, batch_dims=1), [batch, -1])
    best = tf.argmax(final, axis=1, output_type=tf.int32)  # alternative * classes + class
    row = tf.range(batch) * alternatives + best // classes
    number = tf.gather_nd(read, tf.stack([row, tf.gather(ends, row), best % classes], axis=1))
    # Place i is digit i % per of number i // per, which holds `held` characters.
    read_count = tf.gather(tf.constant(lengths, tf.int32), best // classes)[:, None]  # [B, 1]
    place = np.arange(positions)
    # (Below 0 past the reading's end, where PAD replaces the label; no clip to 0: TFLite's
    # converter turns an int32 clip to [0, 6] into RELU6, which has no int32 kernel.)
    held = tf.minimum(read_count - place // per * per, per)  # [B, N]
    power = tf.gather(tf.constant([blank ** p for p in range(per)], tf.int32),
                      tf.maximum(held - 1 - place % per, 0))
    labels = tf.gather(number, place // per, axis=1) // power % blank
    return (tf.where(place < read_count, labels, PAD),
            tf.exp(tf.reduce_max(final, axis=1)))


def label_probability(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The probability of reading `labels`: summed over every path that reads them.

    exp(-CTC loss), by the forward algorithm in dense ops unrolled over the time steps (each
    a matrix-vector product; 0.6 s to trace, like a while loop), so that it runs in a
    SavedModel signature, under XLA and in TFLite. Its cost in a serving call of the fast.cfg
    model, at batch 256 and on one plate: ~+15% and ~+1.2 ms, where a while loop in logs
    cost ~+2.5 ms and one matrix per step multiplied pairwise ~+35%. In probabilities, not
    logs: a path's product over its first steps is at least its product over all of them,
    so nothing underflows unless the reading's probability itself is under 1e-38.

    It is what the exports return as the confidence of a reading. It is calibrated
    (measured on three models: the readings of confidence c are right about c of the time,
    ECE 0.004-0.016 on test and held-out fonts, up to 0.08 on augmented and Cairo-drawn
    plates), where the best path's probability is not (ECE 0.53: a reading's probability
    spreads over its alignments, and a right reading often scores ~0.3). A character's best
    frame posterior, multiplied over the characters, separates right from wrong about as
    well, but gives some noise or photo-like images 0.47-0.92; this stays under 0.3 where
    the model sees no plate.

    Args:
      logits: float [B, T, classes], T known when traced.
      labels: int32 [B, L], alphabet indices, left-aligned and padded with PAD (readings of
        a format with alternatives of several lengths).
    Returns:
      float32 [B] in [0, 1].
    """
    probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    batch, length, classes = tf.shape(labels)[0], labels.shape[1], logits.shape[-1]
    blank, states_count = blank_index(classes), 2 * length + 1
    read = tf.reduce_sum(tf.cast(labels != PAD, tf.int32), axis=1)  # [B]
    # Padding as blanks: states past a reading's end, which its paths never need.
    labels = tf.where(labels == PAD, blank, labels)
    # The labels with a blank before, between and after them: 2L + 1 states.
    blanks = tf.fill([batch, length], blank)
    states = tf.concat([tf.reshape(tf.stack([blanks, labels], axis=2), [batch, 2 * length]),
                        blanks[:, :1]], axis=1)
    emit = tf.gather(probs, states, axis=2, batch_dims=1)              # [B, T, 2L + 1]
    # From state i a path stays, moves to i + 1, or skips to i + 2: the blank between two
    # different characters, never between repeats.
    skips = tf.concat([tf.zeros([batch, 2], tf.bool),
                       (states[:, 2:] != blank) & (states[:, 2:] != states[:, :-2])], axis=1)
    allowed = (tf.constant(np.eye(states_count) + np.eye(states_count, k=1), tf.float32)
               + tf.constant(np.eye(states_count, k=2), tf.float32)
               * tf.cast(skips, tf.float32)[:, None, :])                 # [B, from, to]
    # A path starts on the first blank or the first character, ends on the last character
    # (state 2n - 1 of a reading of n) or the blank after it (2n).
    alpha = tf.concat([emit[:, 0, :2], tf.zeros([batch, states_count - 2])], axis=1)
    for t in range(1, logits.shape[1]):
        alpha = tf.linalg.matvec(allowed, alpha, transpose_a=True) * emit[:, t]
    last = tf.gather(alpha, tf.maximum(2 * read - 1, 0), axis=1, batch_dims=1)
    return tf.minimum(tf.gather(alpha, 2 * read, axis=1, batch_dims=1)
                      + tf.where(read > 0, last, 0.0), 1.0)


def read_plates(logits: tf.Tensor, masks: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """The exports' reading: what the format accepts, and the probability of that reading.

    Args:
      logits: float [B, T, classes].
      masks: bool [A, N, classes - 1], the format (plate_format.masks, or .exactly for
        "every plate has N characters").
    Returns:
      (int32 [B, N] labels of format_decode, PAD after a shorter alternative's end; float32
       [B] label_probability).
    """
    masks = np.asarray(masks, bool)
    positions = masks.shape[1]
    # The best path is the greedy one: when the format accepts its reading it is the best
    # path that the format accepts, and for a batch where every plate's is, the search is
    # skipped.
    greedy, _ = greedy_decode(logits)
    head = greedy[:, :positions]
    if greedy.shape[1] is not None and greedy.shape[1] < positions:
        head = tf.pad(head, [[0, 0], [0, positions - greedy.shape[1]]], constant_values=PAD)
    # Alternative a accepts a reading when each place k holds a class it allows, or PAD
    # past the alternative's end.
    places = tf.constant(masks.any(axis=2))  # [A, N]
    fits = tf.reduce_any(tf.one_hot(head, masks.shape[2], dtype=tf.bool, on_value=True,
                                    off_value=False)[:, None] & masks[None], axis=3)  # [B, A, N]
    fits = tf.reduce_all(tf.where(places, fits, head[:, None] == PAD), axis=2)
    accepted = tf.reduce_all(tf.reduce_any(fits, axis=1)
                             & tf.reduce_all(greedy[:, positions:] == PAD, axis=1))
    labels = tf.cond(accepted, lambda: head, lambda: format_decode(logits, masks)[0])
    return labels, label_probability(logits, labels)


def _sparse(dense: tf.Tensor) -> tf.SparseTensor:
    # from_dense drops zeros: shift so that only PAD becomes 0.
    shifted = tf.sparse.from_dense(dense - PAD)
    return tf.SparseTensor(shifted.indices, shifted.values + PAD, shifted.dense_shape)


SUM_KEYS = ("plates", "plates_correct", "chars", "chars_correct", "edits")  # metric_sums'


def metric_sums(labels: tf.Tensor, decoded: tf.Tensor, weights: tf.Tensor) -> dict:
    """Sums over a batch, to be added across batches and replicas before dividing.

    Args:
      labels: int32 [B, L], a shorter label ended with PAD.
      decoded: int32 [B, T >= L], PAD after each reading's end.
      weights: float32 [B], 0 for padding examples.
    Returns:
      {"plates": number of plates, "plates_correct", "chars": number of label characters,
       "chars_correct" (position by position), "edits": edit distance to the labels}.
    """
    length = tf.shape(labels)[1]
    head, tail = decoded[:, :length], decoded[:, length:]
    exact = tf.reduce_all(head == labels, axis=1) & tf.reduce_all(tail == PAD, axis=1)
    read = labels != PAD
    chars_correct = tf.reduce_sum(tf.cast((head == labels) & read, tf.float32), axis=1)
    edits = tf.edit_distance(_sparse(decoded), _sparse(labels), normalize=False)
    chars = tf.reduce_sum(tf.cast(read, tf.float32), axis=1) * weights
    return {"plates": tf.reduce_sum(weights),
            "plates_correct": tf.reduce_sum(tf.cast(exact, tf.float32) * weights),
            "chars": tf.reduce_sum(chars),
            "chars_correct": tf.reduce_sum(chars_correct * weights),
            "edits": tf.reduce_sum(tf.cast(edits, tf.float32) * weights)}


def rates(sums: dict) -> dict:
    """Plate accuracy, character accuracy and CER from summed metrics (floats)."""
    plates, chars = max(float(sums["plates"]), 1.0), max(float(sums["chars"]), 1.0)
    return {"plate_accuracy": float(sums["plates_correct"]) / plates,
            "char_accuracy": float(sums["chars_correct"]) / chars,
            "cer": float(sums["edits"]) / chars}


def to_strings(decoded: tf.Tensor, alphabet: str) -> tf.Tensor:
    """Decoded labels -> tf.string [B] (PAD draws nothing)."""
    table = tf.constant(list(alphabet) + [""])
    indices = tf.where(decoded == PAD, len(alphabet), decoded)
    return tf.strings.reduce_join(tf.gather(table, indices), axis=1)
