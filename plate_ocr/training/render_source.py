"""Training plates composed by TF ops from the glyph atlas: a stream that never shows a plate twice.

`bin/train --source=render` reads these instead of the training records. tf.data service
workers in other processes run TF ops only (a py_function fails there: "Could not find callback
with key=pyfunc_0"), so the plates are composed in the graph from the atlas that make_records
writes beside the records (atlas.py), with stateless random ops.

Plate g of the stream has the label labels[g mod N] (N training labels: the same set as the
records) and a family, face, size, spacing and position drawn from (seed, g) alone: the same
pixels for the same (seed, g) whichever worker renders it, in whatever order, and new pixels
for the same label each time the stream comes round to it again. Placement is
render.render_plate's (the spacing shrunk until the line fits, the ink anywhere inside the
margins) in integer arithmetic: the tests compare the two pixel for pixel.
"""

import math
import os

import tensorflow as tf

from plate_ocr.data import atlas as atlas_lib, augment as augment_lib, augment_config, records
from plate_ocr.training import input_pipeline

AUTOTUNE = tf.data.AUTOTUNE
# Plates per unit of work: each chunk reads the atlas once (6 MB: 6 KB a plate, less than
# reading a record), and the tf.data service hands chunks to its workers one at a time.
CHUNK = 1024
_COMPOSE_BATCH = 64  # plates composed at once
_RANDOM_STREAM = 7  # salt of the stateless seeds, apart from anything else seeded by --seed
_FAR = 1 << 20  # beyond any pixel or 1/64-pixel position: what a missing character spans


def atlas_path(info: dict, records_dir: str) -> str:
    """The records' glyph atlas, checked against its sha256 in dataset_info.json.

    Raises:
      ValueError: the records have no atlas, or the file is missing or corrupt.
    """
    entry = info.get("glyph_atlas")
    if not entry:
        raise ValueError(f"the records in {records_dir} have no glyph atlas (written by an "
                         "older bin/make_records): rewrite them to train with --source=render")
    path = os.path.join(records_dir, entry["name"])
    problem = input_pipeline.file_problem(path, entry["sha256"])
    if problem:
        raise ValueError(f"{path} is {problem}: rewrite the records with bin/make_records "
                         "--overwrite")
    return path


def read_atlas(path: str | tf.Tensor) -> dict[str, tf.Tensor]:
    """The atlas as tensors (TF ops only: runs on a service worker).

    Returns:
      {"cells": uint8 [glyphs, cell_height, cell_width], "metrics": int32 [glyphs, 5],
       "families": int32 [families, 2], "labels": int32 [N, plate_length] (records.PAD past a
      shorter plate's end)} and the int32 scalars of atlas.GEOMETRY.
    """
    spec = {key: tf.io.FixedLenFeature([], tf.string)
            for key in ("cells", "metrics", "families", "labels")}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in atlas_lib.GEOMETRY})
    features = tf.io.parse_single_example(tf.io.read_file(path), spec)
    atlas = {key: tf.cast(features[key], tf.int32) for key in atlas_lib.GEOMETRY}
    atlas["cells"] = tf.reshape(tf.io.decode_raw(features["cells"], tf.uint8),
                                [-1, atlas["cell_height"], atlas["cell_width"]])
    atlas["metrics"] = tf.reshape(tf.io.decode_raw(features["metrics"], tf.int32), [-1, 5])
    atlas["families"] = tf.reshape(tf.io.decode_raw(features["families"], tf.int32), [-1, 2])
    labels = tf.cast(tf.reshape(tf.io.decode_raw(features["labels"], tf.uint8),
                                [-1, atlas["plate_length"]]), tf.int32)
    atlas["labels"] = tf.where(labels == atlas_lib.LABEL_END, records.PAD, labels)
    return atlas


def _pick(uniform: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """An integer in [0, count) from a uniform in [0, 1)."""
    count = tf.cast(count, tf.int32)
    return tf.minimum(tf.cast(uniform * tf.cast(count, tf.float32), tf.int32), count - 1)


def draw_plates(atlas: dict[str, tf.Tensor], seed: int, chunk: tf.Tensor) -> dict[str, tf.Tensor]:
    """The random choices of the CHUNK plates of one chunk (plates chunk * CHUNK + j).

    Returns:
      {"label": int32 [CHUNK, L], "face", "size_index", "spacing", "x", "y": int32 [CHUNK]}:
      x and y are fractions of the free room, in [0, 1), as float32.
    """
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _RANDOM_STREAM], tf.int64), tf.cast(chunk, tf.int64))
    uniform = tf.random.stateless_uniform([CHUNK, 6], seed=key)
    family = tf.gather(atlas["families"], _pick(uniform[:, 0], tf.shape(atlas["families"])[0]))
    spacings = atlas["spacing_max"] - atlas["spacing_min"] + 1
    plates = tf.cast(chunk, tf.int64) * CHUNK + tf.range(CHUNK, dtype=tf.int64)
    num_labels = tf.cast(tf.shape(atlas["labels"])[0], tf.int64)
    return {"label": tf.gather(atlas["labels"], plates % num_labels),
            "face": family[:, 0] + _pick(uniform[:, 1], family[:, 1]),
            "size_index": _pick(uniform[:, 2], tf.fill([CHUNK], atlas["num_sizes"])),
            "spacing": atlas["spacing_min"] + _pick(uniform[:, 3], tf.fill([CHUNK], spacings)),
            "x": uniform[:, 4], "y": uniform[:, 5]}


def _round_subpixels(value: tf.Tensor) -> tf.Tensor:
    """value / SUBPIXELS rounded half to even, like Python's round() of the float."""
    whole, rest = value // atlas_lib.SUBPIXELS, value % atlas_lib.SUBPIXELS
    half = atlas_lib.SUBPIXELS // 2
    up = (rest > half) | ((rest == half) & (whole % 2 == 1))
    return whole + tf.cast(up, value.dtype)


def compose_ink(atlas: dict[str, tf.Tensor], choices: dict[str, tf.Tensor]) -> tf.Tensor:
    """Draws the ink of a batch of plates, as render.render_plate does (255 - its plate).

    Args:
      atlas: read_atlas's tensors.
      choices: a batch of draw_plates' choices (any batch size).
    Returns:
      uint8 [B, height, width] ink coverage, 255 = ink.
    """
    label = choices["label"]
    length = tf.shape(label)[1]
    character = label != records.PAD  # [B, L]: False past a shorter plate's end
    glyph = ((choices["face"] * atlas["num_sizes"] + choices["size_index"])[:, None]
             * atlas["alphabet_size"] + tf.maximum(label, 0))  # [B, L]
    # Past a label's end (PAD only ends a label) the metrics are character 0's: they place
    # nothing before them, and every use below is masked by `character`.
    height, width, left, top, advance = tf.unstack(tf.gather(atlas["metrics"], glyph), axis=-1)
    # render.fit_spacing: the largest spacing up to the drawn one whose line of ink fits.
    # Every spacing of the range is tried at once; make_records' check_fit guarantees that
    # spacing_min fits.
    candidates = tf.range(atlas["spacing_min"], atlas["spacing_max"] + 1)  # [S]
    pen = tf.cumsum(advance, axis=1, exclusive=True)[:, None, :]  # [B, 1, L], 1/64 pixels
    pen += (candidates[None, :, None] * atlas_lib.SUBPIXELS
            * tf.range(length)[None, None, :])  # [B, S, L]
    offsets = _round_subpixels(pen) + left[:, None, :]  # ink left edge of each glyph
    drawn = character[:, None, :]
    extent = (tf.reduce_max(tf.where(drawn, offsets + width[:, None, :], -_FAR), axis=2)
              - tf.reduce_min(tf.where(drawn, offsets, _FAR), axis=2))  # [B, S]
    available = atlas["width"] - 2 * atlas["margin"]
    fits = (extent <= available) & (candidates[None, :] <= choices["spacing"][:, None])
    chosen = tf.argmax(tf.cast(fits, tf.int32) * (1 + tf.range(tf.size(candidates))[None, :]),
                       axis=1, output_type=tf.int32)  # the last spacing that fits
    offsets = tf.gather(offsets, chosen, axis=1, batch_dims=1)  # [B, L]
    x_min = tf.reduce_min(tf.where(character, offsets, _FAR), axis=1)
    ink_width = tf.reduce_max(tf.where(character, offsets + width, -_FAR), axis=1) - x_min
    y_min = tf.reduce_min(tf.where(character, top, _FAR), axis=1)
    ink_height = tf.reduce_max(tf.where(character, top + height, -_FAR), axis=1) - y_min
    # render_plate's rng.integers(margin, size - margin - ink + 1): the same range.
    x0 = atlas["margin"] + _pick(choices["x"], available - ink_width + 1) - x_min
    baseline = (atlas["margin"] + _pick(choices["y"], atlas["height"] - 2 * atlas["margin"]
                                        - ink_height + 1) - y_min)
    glyph_x = x0[:, None] + offsets  # [B, L]: top left corner of each glyph's cell
    glyph_y = baseline[:, None] + top
    # Each glyph's cell is written at its place with a maximum (overlapping glyphs keep the
    # darker ink, as np.maximum does in render_plate); the parts of a cell beyond the plate
    # hold no ink (the ink is inside the margins) and are dropped.
    cell_height, cell_width = atlas["cell_height"], atlas["cell_width"]
    cells = tf.gather(atlas["cells"], glyph)  # [B, L, cell_height, cell_width]
    cells = tf.where(character[:, :, None, None], cells, 0)
    rows = glyph_y[:, :, None, None] + tf.range(cell_height)[None, None, :, None]
    columns = glyph_x[:, :, None, None] + tf.range(cell_width)[None, None, None, :]
    inside = (rows >= 0) & (rows < atlas["height"]) & (columns >= 0) & (columns < atlas["width"])
    shape = tf.shape(inside)
    plates = tf.broadcast_to(tf.range(shape[0])[:, None, None, None], shape)
    indices = tf.stack([plates, tf.broadcast_to(tf.where(inside, rows, 0), shape),
                        tf.broadcast_to(tf.where(inside, columns, 0), shape)], axis=-1)
    ink = tf.tensor_scatter_nd_max(
        tf.zeros([shape[0], atlas["height"], atlas["width"]], tf.uint8),
        tf.reshape(indices, [-1, 3]), tf.reshape(tf.where(inside, cells, 0), [-1]))
    return ink


def chunk_plates(path: str, seed: int, chunk: tf.Tensor, height: int, width: int,
                 augment: augment_config.AugmentConfig | None = None,
                 clean_fraction: float = 0.0, alphabet: str = "") -> tf.data.Dataset:
    """The plates of one chunk, in order: (images uint8 [H, W], labels int32 [L], ink uint8
    [H, W]).

    With `augment`, each plate gets augment's effects from its key, plate_keys(seed, "train",
    plate), except a clean_fraction of them (by plate number): still a pure function of
    (seed, plate). `ink` is where the plate's characters are, as a clean dark-on-white plate
    (the plate itself when clean): what align.frame_targets reads. `alphabet` (the labels'
    characters) says which characters augment turns one way only.
    """
    atlas = read_atlas(path)
    if augment is not None:
        if not alphabet:
            raise ValueError("augmented plates need the labels' alphabet")
        turn_ways = tf.constant(augment.turn_ways(alphabet), tf.int32)
    choices = tf.data.Dataset.from_tensor_slices(draw_plates(atlas, seed, chunk))
    first = tf.cast(chunk, tf.int64) * CHUNK

    def plates(index, batch):
        # Static plate sizes (the atlas holds them as tensors): augment's kernels need them.
        ink = tf.ensure_shape(compose_ink(atlas, batch), [None, height, width])
        clean = 255 - ink
        if augment is None:
            return clean, batch["label"], clean
        plate = first + index * _COMPOSE_BATCH + tf.range(tf.shape(ink)[0], dtype=tf.int64)
        # Which plates stay clean: the golden-ratio sequence of their numbers, evenly spread.
        keep = tf.math.floormod(tf.cast(plate, tf.float64) * 0.6180339887498949,
                                1.0) < clean_fraction

        def augmented(clean, keys, ways):  # (plates, their warped ink)
            return augment_lib.augment_with_ink(255 - clean, augment, keys, atlas["margin"],
                                                ways)
        # Only the others are augmented.
        plates, warped = augment_lib.on_chosen(
            ~keep, augmented, clean, augment_lib.plate_keys(seed, "train", plate),
            # PAD (-1) takes the last way, NO_CHARACTER, as numpy's index -1 does.
            tf.gather(turn_ways, tf.math.floormod(batch["label"], tf.size(turn_ways))))
        return plates, batch["label"], warped
    return choices.batch(_COMPOSE_BATCH).enumerate().map(plates).unbatch()


def epoch_chunks(plates_per_epoch: int, shuffle_buffer: int, pipelines: int) -> int:
    """Chunks between the first chunks of two training epochs.

    Each epoch starts a new iterator at chunk epoch * epoch_chunks (so a resumed run sees what
    an uninterrupted one saw); the room for the shuffle buffer's read-ahead keeps epochs from
    sharing a plate. Pipeline i of n reads chunks i, i + n, i + 2n, ...: the plates it hands
    out in an epoch are among the first plates_per_epoch / n + shuffle_buffer it reads, which
    touch at most one chunk more than they fill (the interleave reads two chunks at a time),
    and each pipeline needs that many of its own chunks.
    """
    per_pipeline = math.ceil(plates_per_epoch / pipelines) + shuffle_buffer
    return pipelines * (math.ceil(per_pipeline / CHUNK) + 1)


def make_render_dataset(path: str, batch_size: int, height: int, width: int, plate_length: int,
                        seed: int, first_chunk: int, input_context: tf.distribute.InputContext | None = None,
                        service: str = "", shuffle_buffer: int = 10000,
                        augment: augment_config.AugmentConfig | None = None,
                        clean_fraction: float = 0.0, alphabet: str = "") -> tf.data.Dataset:
    """Endless training batches rendered from the atlas, in process or on a tf.data service.

    Args:
      path: the glyph atlas (atlas_path); service workers must read it at this path.
      batch_size: examples per batch of this pipeline (per replica under a strategy).
      height, width, plate_length: from dataset_info.json (the shapes are static, as the
        records pipeline's).
      seed: the plates' seed (pixels) and, with first_chunk, the order's.
      first_chunk: where this stream starts (a training epoch's; see epoch_chunks).
      input_context: the strategy's: pipeline i of n renders chunks first_chunk + i + k * n.
      service: grpc://HOST:PORT of a tf.data service, or "" to render in this process. On the
        service the chunks are handed out dynamically (make_service_dataset's sharding).
      shuffle_buffer: plates in the shuffle buffer.
      augment: the effects to apply (augment.py), or None for clean plates.
      clean_fraction: of the plates, left clean when augmenting.
      alphabet: the labels' characters (needed with augment).
    Returns:
      batches of (images uint8 [B, H, W], labels int32 [B, L], weights float32 [B], ink
      uint8 [B, H, W]: where each plate's characters are, for the frame targets).
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    # Endless in practice: 2^31 chunks are 2 * 10^12 plates.
    chunks = tf.data.Dataset.range(first_chunk + pipeline_id, first_chunk + 2 ** 31, pipelines)
    # Two chunks at a time: each worker holds only the chunks it renders.
    dataset = chunks.interleave(lambda chunk: chunk_plates(path, seed, chunk, height, width,
                                                           augment, clean_fraction,
                                                           alphabet),
                                cycle_length=2,
                                num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.shuffle(shuffle_buffer, seed=(seed * 1_000_003 + first_chunk) % 2 ** 31)
    dataset = dataset.batch(batch_size, drop_remainder=not service)
    dataset = dataset.map(lambda images, labels, ink: input_pipeline.unit_weights(
        tf.ensure_shape(images, [images.shape[0], height, width]),
        tf.ensure_shape(labels, [labels.shape[0], plate_length]))
        + (tf.ensure_shape(ink, [ink.shape[0], height, width]),))
    if service:
        return input_pipeline.through_service(dataset, service, batch_size)
    return input_pipeline.finish(dataset)
