"""CTC loss, greedy, fixed-length and format decoding and metrics on hand-built tensors."""

import itertools
import re

import numpy as np
import pytest
import tensorflow as tf

from plate_ocr.training import ctc, plate_format

CLASSES = 11  # ten digits + blank (last)
BLANK = CLASSES - 1


def logits_for(paths: list[list[int]]) -> tf.Tensor:
    """Logits whose best class at each step follows the given paths."""
    logits = np.full((len(paths), len(paths[0]), CLASSES), -5.0, np.float32)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            logits[b, t, c] = 5.0
    return tf.constant(logits)


def test_greedy_decode_collapses_repeats_and_removes_blanks():
    B = BLANK
    logits = logits_for([
        [1, 1, B, 2, 2, 2, B, 3, B, 3, 4, B],  # 1 2 3 3 4: a blank separates the repeat
        [B, 5, 5, 5, 5, 5, 5, B, B, B, B, B],  # 5 only: repeats without blank collapse
        [B] * 12,                                # empty
    ])
    decoded, confidence = ctc.greedy_decode(logits)
    assert decoded.shape == (3, 12) and decoded.dtype == tf.int32
    assert decoded[0].numpy().tolist() == [1, 2, 3, 3, 4] + [ctc.PAD] * 7
    assert decoded[1].numpy().tolist() == [5] + [ctc.PAD] * 11
    assert decoded[2].numpy().tolist() == [ctc.PAD] * 12
    assert np.all((confidence.numpy() > 0.5) & (confidence.numpy() <= 1.0))


def best_path_where(log_probs: np.ndarray, accept) -> tuple[list[int], float]:
    """By brute force: the most probable path over every path whose reading `accept`s."""
    steps, classes = log_probs.shape
    best, best_score = None, -np.inf
    for path in itertools.product(range(classes), repeat=steps):
        read = [c for i, c in enumerate(path)
                if c != classes - 1 and (i == 0 or path[i - 1] != c)]
        score = sum(log_probs[t, c] for t, c in enumerate(path))
        if accept(read) and score > best_score:
            best, best_score = read, score
    return best, best_score


def best_path_of_length(log_probs: np.ndarray, length: int) -> tuple[list[int], float]:
    return best_path_where(log_probs, lambda read: len(read) == length)


def fixed_length_decode(logits, length: int):
    """The format "any `length` characters" (what the exports read by default)."""
    return ctc.format_decode(logits, plate_format.exactly(length, logits.shape[-1] - 1))


def test_the_format_of_n_characters_finds_the_best_path_of_that_length():
    # Every path of 7 steps over 3 characters + blank: the search must find the same one.
    logits = tf.random.stateless_normal((12, 7, 4), seed=(5, 6)) * 2.0
    log_probs = tf.nn.log_softmax(logits).numpy()
    for length in (1, 3):
        decoded, confidence = fixed_length_decode(logits, length)
        assert decoded.shape == (12, length) and decoded.dtype == tf.int32
        for b in range(12):
            read, score = best_path_of_length(log_probs[b], length)
            assert decoded[b].numpy().tolist() == read
            np.testing.assert_allclose(confidence[b].numpy(), np.exp(score), rtol=1e-4)


def test_the_format_of_n_characters_reads_exactly_n_and_agrees_with_greedy_there():
    B = BLANK
    logits = logits_for([
        [1, 1, B, 2, 2, B, 3, B, 3, 4, B, B],  # greedy reads 1 2 3 3 4: both agree
        [1, B, 2, B, 3, B, 3, B, 4, B, 4, B],  # greedy reads 6: one digit too many
        [1, 1, 1, B, 2, 2, 2, B, 3, B, B, 4],  # greedy reads 4: one too few
    ])
    # The best 5-digit paths change the least sure step: a 3 to a blank on the second
    # plate, a 1 to a blank (splitting the 1s in two) on the third.
    logits = logits.numpy()
    logits[1, 6, [3, BLANK]] = [5.0, 4.9]
    logits[2, 1, [1, BLANK]] = [5.0, 4.0]
    decoded, confidence = fixed_length_decode(tf.constant(logits), 5)
    greedy = ctc.greedy_decode(tf.constant(logits))[0].numpy()
    assert decoded[0].numpy().tolist() == [1, 2, 3, 3, 4] == greedy[0, :5].tolist()
    assert decoded[1].numpy().tolist() == [1, 2, 3, 4, 4]
    assert decoded[2].numpy().tolist() == [1, 1, 2, 3, 4]
    assert np.all((confidence.numpy() > 0) & (confidence.numpy() <= 1))
    assert confidence[0] > confidence[1]
    compiled = tf.function(lambda x: fixed_length_decode(x, 5), jit_compile=True)
    assert compiled(tf.constant(logits))[0].numpy().tolist() == decoded.numpy().tolist()


def test_format_decode_finds_the_best_path_the_format_accepts():
    # Every path of 7 steps over 3 characters + blank ("abc"), formats with classes, counts
    # and alternatives of several lengths: the search must find the brute force's path.
    logits = tf.random.stateless_normal((10, 7, 4), seed=(11, 12)) * 2.0
    log_probs = tf.nn.log_softmax(logits).numpy()
    for pattern in ("[ab]c{1,2}", "a.|[bc]{3}", "b{0,1}[a-c]a", "c"):
        masks = plate_format.masks(pattern, "abc")
        regex = re.compile(pattern)  # the same language as Python's regular expressions
        decoded, confidence = ctc.format_decode(logits, masks)
        assert decoded.shape == (10, masks.shape[1]) and decoded.dtype == tf.int32
        for b in range(10):
            read, score = best_path_where(
                log_probs[b], lambda r: regex.fullmatch("".join("abc"[c] for c in r)))
            assert decoded[b].numpy().tolist() == read + [ctc.PAD] * (masks.shape[1] - len(read))
            np.testing.assert_allclose(confidence[b].numpy(), np.exp(score), rtol=1e-4)


def test_format_decode_reads_long_plates_of_a_large_alphabet():
    # 36 classes, 8 characters: more readings than an int32 numbers (a search that carried
    # each state's reading as one number in base 36 could not).
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    masks = plate_format.masks("[A-Z]{3}[0-9]{4,5}", alphabet)
    want = [alphabet.index(c) for c in "XZY98765"]
    paths = [[36] + [c for c in want for _ in (0, 1)] + [36] * 5]  # each character twice
    logits = np.full((1, 22, 37), -5.0, np.float32)
    for t, c in enumerate(paths[0]):
        logits[0, t, c] = 5.0
    logits[0, 3, [alphabet.index("Z"), alphabet.index("2")]] = [4.0, 6.0]  # a 2 where a Z goes
    decoded, _ = ctc.format_decode(tf.constant(logits), masks)
    assert decoded.numpy().tolist() == [want]
    tail = ctc.format_decode(tf.constant(logits), plate_format.masks("[A-Z]{3}[0-9]{4}",
                                                                     alphabet))[0]
    assert len(tail.numpy()[0]) == 7  # one digit fewer: the best path that drops one


def test_plate_formats_expand_to_masks_and_refuse_what_they_cannot_read():
    masks = plate_format.masks("[A-C]{2}[0-9]{1,2}|7", "0123456789ABC")
    assert masks.shape == (3, 4, 13)  # AA0, AA00 and 7, the longest 4 places
    assert masks[0, :2, 10:].all() and not masks[0, :2, :10].any()
    assert masks[0, 2, :10].all() and not masks[0, 3].any()
    assert masks[1, 3, :10].all() and masks[2, 0].tolist() == [c == 7 for c in range(13)]
    np.testing.assert_array_equal(plate_format.masks(".{5}", "0123456789"),
                                  plate_format.exactly(5, 10))
    for bad, message in (("[A-Z]{2}", "no character of the alphabet"), ("12A", "not in the alphabet"), ("[0-9", "cannot read"),
                         ("1|", "empty alternative"), ("[9-0]", "empty"),
                         ("1{3,2}", "count"), (".{1,9}.{1,9}", "more than 64")):
        with pytest.raises(ValueError, match=re.escape(message)):
            plate_format.masks(bad, "0123456789")


def test_label_probability_sums_every_path_that_reads_the_label():
    # By brute force over every path of 7 steps over 3 characters + blank, with repeats.
    logits = tf.random.stateless_normal((4, 7, 4), seed=(7, 8)) * 2.0
    labels = tf.constant([[0, 1, 2], [1, 1, 0], [2, 2, 2], [0, 0, 1]], tf.int32)
    probabilities = ctc.label_probability(logits, labels).numpy()
    log_probs = tf.nn.log_softmax(logits).numpy()
    for b, label in enumerate(labels.numpy().tolist()):
        total = sum(np.exp(sum(log_probs[b, t, c] for t, c in enumerate(path)))
                    for path in itertools.product(range(4), repeat=7)
                    if [c for i, c in enumerate(path)
                        if c != 3 and (i == 0 or path[i - 1] != c)] == label)
        np.testing.assert_allclose(probabilities[b], total, rtol=1e-4)
    # exp(-CTC loss) (random logits: small enough that it does not underflow), under XLA
    # too; impossible readings give 0.
    logits = tf.random.stateless_normal((6, 20, CLASSES), seed=(1, 2))
    labels = tf.random.stateless_uniform((6, 5), seed=(3, 4), maxval=BLANK, dtype=tf.int32)
    loss = ctc.per_example_loss(labels, logits).numpy()
    probabilities = ctc.label_probability(logits, labels).numpy()
    np.testing.assert_allclose(np.log(probabilities), -loss, rtol=1e-4)
    compiled = tf.function(ctc.label_probability, jit_compile=True)
    np.testing.assert_allclose(compiled(logits, labels).numpy(), probabilities, rtol=1e-4)
    five_ones = tf.ones([1, 5], tf.int32)  # needs 9 steps: 1 blank 1 blank ... 1
    assert ctc.label_probability(logits[:1, :8], five_ones).numpy()[0] == 0.0
    assert ctc.label_probability(logits[:1, :9], five_ones).numpy()[0] > 0.0


def test_read_plates_is_confident_on_a_clear_reading_and_not_on_an_unclear_one():
    B = BLANK
    clear = logits_for([[B, 1, 1, B, 2, B, 3, 3, B, 3, B, 4, B, B, B, B]]).numpy()
    unclear = clear.copy()
    unclear[0, 4, [2, 7]] = [5.0, 5.0]  # is the second digit a 2 or a 7?
    empty = logits_for([[B] * 16]).numpy()  # the model sees no digit
    labels, confidence = ctc.read_plates(tf.constant(np.concatenate([clear, unclear, empty])),
                                         plate_format.exactly(5, BLANK))
    assert labels[0].numpy().tolist() == [1, 2, 3, 3, 4]
    assert labels.shape == (3, 5)
    confidence = confidence.numpy()
    assert confidence[0] > 0.99
    assert 0.3 < confidence[1] < 0.6  # half of the probability on each reading
    assert confidence[2] < 1e-6
    # The best path alone would say much less than the reading's probability on a clear
    # plate: it spreads over the alignments (here the blank or digit at each boundary).
    assert fixed_length_decode(tf.constant(clear), 5)[1].numpy()[0] < confidence[0]


def test_read_plates_reads_as_the_search_when_greedy_decoding_reads_the_length_and_when_not():
    # Random logits: greedy decoding reads every length. A batch where all plates read 3
    # takes the shortcut (the greedy labels), a batch with any other length the search: both
    # give the search's labels.
    logits = tf.random.stateless_normal((400, 9, 4), seed=(9, 10)) * 3.0
    greedy = ctc.greedy_decode(logits)[0].numpy()
    exact = np.sum(greedy != ctc.PAD, axis=1) == 3
    assert 20 < exact.sum() < 380
    read = tf.function(lambda x: ctc.read_plates(x, plate_format.exactly(3, 3))[0])
    for batch in (logits.numpy()[exact], logits.numpy()):
        labels = read(tf.constant(batch)).numpy()
        assert labels.tolist() == fixed_length_decode(tf.constant(batch), 3)[0].numpy().tolist()
    shortcut = read(tf.constant(logits.numpy()[exact])).numpy()
    assert shortcut.tolist() == greedy[exact][:, :3].tolist()


def test_loss_is_lower_for_the_true_label():
    B = BLANK
    logits = logits_for([[0, B, 3, B, 7, 7, B, 7, B, 2, B, B, B, B, B, B]] * 2)
    labels = tf.constant([[0, 3, 7, 7, 2], [0, 3, 7, 2, 2]], tf.int32)
    for kernel in (False, True):
        loss = ctc.per_example_loss(labels, logits, kernel=kernel).numpy()
        assert loss.shape == (2,)
        assert loss[0] < 0.1 < 5 < loss[1]


def test_kernel_and_dense_loss_agree_in_value_and_gradient():
    logits = tf.random.stateless_normal((8, 64, CLASSES), seed=(1, 2))
    labels = tf.random.stateless_uniform((8, 5), seed=(3, 4), maxval=BLANK, dtype=tf.int32)
    values, gradients = [], []
    for kernel in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = ctc.per_example_loss(labels, logits, kernel=kernel)
        values.append(loss.numpy())
        gradients.append(tape.gradient(loss, logits).numpy())
    assert values[0].shape == (8,) and np.all(values[0] > 1.0)
    np.testing.assert_allclose(values[1], values[0], rtol=1e-4)
    np.testing.assert_allclose(gradients[1], gradients[0], atol=1e-4)


def test_metric_sums_count_plates_characters_and_edits():
    labels = tf.constant([[1, 2, 3, 4, 5]] * 4, tf.int32)
    pad = ctc.PAD
    decoded = tf.constant([
        [1, 2, 3, 4, 5, pad, pad],    # right
        [1, 2, 3, 4, pad, pad, pad],  # one dropped: 4 chars right by position, 1 edit
        [1, 2, 3, 4, 5, 6, pad],      # one extra: all 5 positions right, but wrong plate
        [pad] * 7,                    # empty decode: 5 edits
    ], tf.int32)
    sums = {k: float(v) for k, v in ctc.metric_sums(labels, decoded, tf.ones([4])).items()}
    assert sums == {"plates": 4, "plates_correct": 1, "chars": 20, "chars_correct": 14,
                    "edits": 7}
    rates = ctc.rates(sums)
    assert rates["plate_accuracy"] == 0.25 and rates["char_accuracy"] == 0.7
    assert abs(rates["cer"] - 7 / 20) < 1e-9
    weighted = ctc.metric_sums(labels, decoded, tf.constant([1.0, 0, 0, 0]))
    assert float(weighted["plates"]) == 1 and float(weighted["edits"]) == 0


def test_to_strings():
    decoded = tf.constant([[0, 3, 9, ctc.PAD], [ctc.PAD] * 4], tf.int32)
    assert ctc.to_strings(decoded, "0123456789").numpy().tolist() == [b"039", b""]


def test_read_plates_with_a_format_reads_as_its_search_with_or_without_the_shortcut():
    # Random logits over "abc": greedy decoding reads anything. Where the format accepts every
    # plate's greedy reading the shortcut gives it; elsewhere the search. The same labels, and
    # the confidence is the probability of the (shorter or longer) reading.
    masks = plate_format.masks("a[bc]{1,2}|c{3}", "abc")
    logits = tf.random.stateless_normal((400, 8, 4), seed=(13, 14)) * 3.0
    greedy = ctc.greedy_decode(logits)[0].numpy()
    regex = re.compile("a[bc]{1,2}|c{3}")
    accepted = np.array([bool(regex.fullmatch("".join("abc"[c] for c in row if c >= 0)))
                         for row in greedy])
    assert 5 < accepted.sum() < 395
    read = tf.function(lambda x: ctc.read_plates(x, masks))
    for batch in (logits.numpy()[accepted], logits.numpy()):
        labels, confidence = read(tf.constant(batch))
        searched = ctc.format_decode(tf.constant(batch), masks)[0].numpy()
        assert labels.numpy().tolist() == searched.tolist()
        for row, label in enumerate(labels.numpy()[:20]):
            text = "".join("abc"[c] for c in label if c >= 0)
            assert regex.fullmatch(text)
            np.testing.assert_allclose(  # the reading's own probability, as if unpadded
                confidence.numpy()[row], ctc.label_probability(
                    tf.constant(batch[row:row + 1]), tf.constant([label[label >= 0]])).numpy()[0],
                rtol=1e-5)
    assert read(tf.constant(logits.numpy()[accepted]))[0].numpy().tolist() == [
        row[:3].tolist() for row in greedy[accepted]]


def test_labels_of_several_lengths_end_in_pad_and_cost_what_their_characters_cost():
    """Records of plates of several lengths end the shorter labels in PAD: the loss of such a
    label is that of its characters alone (both CTC implementations), and the metrics count
    only its characters."""
    logits = tf.random.stateless_normal((3, 12, 4), seed=(11, 12)) * 2.0
    padded = tf.constant([[1, 2, ctc.PAD], [0, 1, 2], [2, ctc.PAD, ctc.PAD]], tf.int32)
    for kernel in (False, True):
        losses = ctc.per_example_loss(padded, logits, kernel).numpy()
        for row, label in enumerate(([1, 2], [0, 1, 2], [2])):
            alone = ctc.per_example_loss(tf.constant([label]), logits[row:row + 1], kernel)
            np.testing.assert_allclose(losses[row], alone.numpy()[0], rtol=1e-5)
    decoded = tf.constant([[1, 2, ctc.PAD, ctc.PAD], [0, 1, 1, ctc.PAD], [2, 0, ctc.PAD, ctc.PAD]])
    sums = {key: float(value) for key, value in
            ctc.metric_sums(padded, decoded, tf.ones([3])).items()}
    # Plate 1 right; plate 2 one character wrong; plate 3 its one character right and one
    # too many: 5 of 6 characters right place by place, 2 edits.
    assert sums == {"plates": 3.0, "plates_correct": 1.0, "chars": 6.0, "chars_correct": 5.0,
                    "edits": 2.0}


def test_the_default_format_of_several_lengths_reads_any_of_them():
    masks = plate_format.for_model("", "abc", [4, 2])
    assert masks.shape == (2, 4, 3)  # an alternative a length, the places up to the longest
    assert masks.any(axis=2).tolist() == [[True, True, False, False], [True] * 4]
    assert (plate_format.for_model("", "abc", [3]) == plate_format.exactly(3, 3)).all()
    # Brute force over every path of 7 steps: the best of 2 or 4 characters.
    logits = tf.random.stateless_normal((12, 7, 4), seed=(13, 14)) * 2.0
    log_probs = tf.nn.log_softmax(logits).numpy()
    decoded = ctc.format_decode(logits, masks)[0].numpy()
    for b in range(12):
        read, _ = best_path_where(log_probs[b], lambda read: len(read) in (2, 4))
        assert [i for i in decoded[b] if i != ctc.PAD] == read
