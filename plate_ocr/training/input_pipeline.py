"""make_dataset(files, ...) -> tf.data.Dataset of (uint8 images, int32 labels, float32 weights).

Batches keep a static shape everywhere (TPU and XLA need it): training drops the remainder of
an endless stream; evaluation pads its last batch and marks the padding with weight 0, so it
still reads every example exactly once. A weight is the plate's weight in the loss: in
training 1, or TightPlates.weight for the smallest, most tightly spaced plates.
"""

import dataclasses
import hashlib
import os
import random
from typing import Sequence

import tensorflow as tf

from plate_ocr.data import records

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class TightPlates:
    """Training plates of font size <= font_size and spacing <= spacing weigh `weight` in the
    loss (1: no emphasis). Their digits span the fewest CTC frames, and they are where a
    model trained briefly still drops or merges digits (docs/experiments.md, "Time to accuracy")."""

    weight: float = 1.0
    font_size: int = 19
    spacing: int = 1


def parse_batch(serialized: tf.Tensor, height: int, width: int, plate_length: int,
                tight: TightPlates | None = None) -> tuple[tf.Tensor, ...]:
    """Parses a batch of serialized Examples at once: uint8 [B, H, W], int32 [B, L], and with
    `tight` each plate's float32 [B] weight in the training loss.

    Only the training features of the records.FEATURES schema are read, in one parse. A
    label shorter than plate_length (L: records of plates of several lengths, or a mixed
    source of shorter plates) ends in records.PAD.
    """
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.RaggedFeature(tf.int64)}
    if tight:
        spec.update(font_size=tf.io.FixedLenFeature([], tf.int64),
                    spacing=tf.io.FixedLenFeature([], tf.int64))
    features = tf.io.parse_example(serialized, spec)
    # decode_raw on the whole batch: one op instead of one decode per example.
    images = tf.io.decode_raw(features["image"], tf.uint8)
    images = tf.reshape(images, [serialized.shape[0] or -1, height, width])  # keep a static batch
    labels = features["label"].to_tensor(records.PAD, shape=[serialized.shape[0], plate_length])
    parsed = images, tf.cast(labels, tf.int32)
    if not tight:
        return parsed
    is_tight = (features["font_size"] <= tight.font_size) & (features["spacing"] <= tight.spacing)
    return parsed + (tf.where(is_tight, tf.constant(tight.weight, tf.float32), 1.0),)


def _pad_batch(images, labels, batch_size):
    count = tf.shape(images)[0]
    padding = batch_size - count
    images = tf.pad(images, [[0, padding], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, padding], [0, 0]])
    weights = tf.cast(tf.sequence_mask(count, batch_size), tf.float32)
    return images, labels, weights


def make_dataset(files: list[str], batch_size: int, training: bool, height: int, width: int,
                 plate_length: int, input_context: tf.distribute.InputContext | None = None,
                 shuffle_buffer: int = 10000, seed: int | None = None,
                 tight: TightPlates = TightPlates(),
                 mix: Sequence[tuple[list[str], float]] = ()) -> tf.data.Dataset:
    """Streams plates from TFRecord shards.

    Args:
      files: the split's shard paths.
      batch_size: examples per batch of this pipeline (per replica under a strategy).
      training: shuffle and repeat forever (drop remainder), else one pass, last batch padded.
      height, width, plate_length: from dataset_info.json.
      input_context: the strategy's; selects this pipeline's files (or records).
      shuffle_buffer: examples in the shuffle buffer.
      seed: shuffling seed (None: nondeterministic).
      tight: the training plates that weigh more in the loss.
      mix: in training, other sources (shard paths of the same plate shape and alphabet) and
        the fraction of the plates each gives; `files` give the rest. Each plate is drawn
        from a source at random (seeded), so every batch mixes them.
    Returns:
      batches of (images uint8 [B, H, W], labels int32 [B, L], weights float32 [B]).
    """
    dataset = _records(files, training, input_context, shuffle_buffer, seed)
    if training and mix:
        sources = [dataset] + [_records(other, True, input_context, shuffle_buffer, seed)
                               for other, _ in mix]
        fractions = [1 - sum(fraction for _, fraction in mix)] + [f for _, f in mix]
        dataset = tf.data.Dataset.sample_from_datasets(sources, fractions, seed=seed)
    # Batch before parsing: parse_example and decode_raw run once per batch, not per plate;
    # drop_remainder makes the training batch shape static.
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if training:
        # In order too: out of order, a resumed epoch met its batches in another order than
        # the uninterrupted run (a test compares them).
        return finish(dataset.map(
            lambda s: parse_batch(s, height, width, plate_length, tight),
            num_parallel_calls=AUTOTUNE, deterministic=True))
    dataset = dataset.map(lambda s: parse_batch(s, height, width, plate_length),
                          num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda images, labels: _pad_batch(images, labels, batch_size))
    return finish(dataset)


def _records(files: list[str], training: bool, input_context: tf.distribute.InputContext | None,
             shuffle_buffer: int, seed: int | None) -> tf.data.Dataset:
    """This pipeline's serialized records of the shards: in training shuffled, endless."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_files = pipelines > 1 and len(files) >= pipelines
    if shard_files:
        # Each pipeline reads its own files: no pipeline reads a record it then throws away.
        dataset = dataset.shard(pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # Interleave several shards in parallel: reading is I/O-bound per file, and mixing files
    # gives the shuffle buffer plates from everywhere. Deterministic, so that the order follows
    # the seed and a resumed run sees what the uninterrupted one saw.
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    if pipelines > 1 and not shard_files:
        # Fewer files than pipelines (small eval splits): split by record instead.
        dataset = dataset.shard(pipelines, pipeline_id)
    if training:
        # Shuffle before repeat: every epoch sees each plate once, in a new order.
        dataset = dataset.shuffle(shuffle_buffer, seed=seed).repeat()
    return dataset


def finish(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The last steps of every pipeline: no auto-sharding by the strategy, prefetching."""
    options = tf.data.Options()
    # Files are sharded here by InputContext; the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(AUTOTUNE)


def unit_weights(images: tf.Tensor, labels: tf.Tensor):
    """(images, labels) -> (images, labels, weights): every plate of weight 1."""
    return images, labels, tf.ones_like(labels[:, 0], tf.float32)


def through_service(dataset: tf.data.Dataset, service: str, batch_size: int) -> tf.data.Dataset:
    """Runs a pipeline's batches on a tf.data service, handing out its source dynamically.

    Args:
      dataset: (images, labels, weights) batches; the last of a worker's part may be short.
      service: grpc://HOST:PORT.
      batch_size: the batch size of the result.
    Returns:
      endless batches of (images, labels, weights), each whole.
    """
    dataset = dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=service))
    # Repeat before rebatch: batches run across the end of a pass, so no example is dropped,
    # and drop_remainder makes the batch shape static.
    return finish(dataset.repeat().rebatch(batch_size, drop_remainder=True))


def make_service_dataset(files: list[str], batch_size: int, height: int, width: int,
                         plate_length: int, service: str,
                         input_context: tf.distribute.InputContext | None = None,
                         shuffle_buffer: int = 10000, seed: int | None = None,
                         tight: TightPlates = TightPlates()) -> tf.data.Dataset:
    """The training stream of make_dataset, its reading and parsing done by a tf.data service.

    Sharding: distributed_epoch (ShardingPolicy.DYNAMIC). The dispatcher hands the shard
    names out one at a time to whichever worker asks, so each record is read once per pass
    however many workers there are, and workers can come and go. (OFF, parallel_epochs, has
    every worker read every record; the static FILE/DATA policies need a fixed list of
    workers.) A dead worker's unfinished shards are lost for that pass (at most once).

    Each pass is its own job, and the stream repeats on this side: a pass ends when every
    record of it was delivered, so an epoch of records is exactly the training split. Each
    input pipeline (one per host under a strategy) has its own anonymous job over its own
    files: no records are shared, and no job name can clash with an earlier run's (a named job
    that a killed run left half read would be joined, not started afresh).

    Args:
      files: the training split's shard paths; every service worker must read them at these
        paths (a shared file system or gs://).
      batch_size: examples per batch of this pipeline (per replica under a strategy).
      height, width, plate_length: from dataset_info.json.
      service: the dispatcher, grpc://HOST:PORT.
      input_context: the strategy's; selects this pipeline's files.
      shuffle_buffer: examples in each worker's shuffle buffer.
      seed: the order of the files in each pass, and the workers' shuffling (None: random).
      tight: the plates that weigh more in the loss.
    Returns:
      endless batches of (images uint8 [B, H, W], labels int32 [B, L], weights float32 [B]).
    Raises:
      ValueError: fewer files than input pipelines.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    if len(files) < pipelines:
        # Under dynamic sharding a worker sees only the files it is handed, so a record-level
        # shard() (make_dataset's fallback) would drop records instead of splitting them.
        raise ValueError(f"training through the data service with {pipelines} input pipelines "
                         f"needs at least {pipelines} training shards, the records have "
                         f"{len(files)}: rewrite them with bin/make_records --shards")
    # Selected here, not with dataset.shard(): on the service a shard() would see only the
    # files handed to its worker.
    files = list(files[pipeline_id::pipelines])
    # The file order is fixed when the dataset is built (the dispatcher hands out the files in
    # this order): a Dataset.shuffle of the names would run on each worker and take as many
    # files as its buffer holds before the other workers get any.
    random.Random(seed).shuffle(files)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    # A short cycle: each worker holds only the files it is reading, so the others get theirs.
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 2),
                                 num_parallel_calls=AUTOTUNE)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    # Batched and parsed on the worker (the work the service is for); the last batch of a
    # worker's part of a pass is short, and rebatch below makes every batch whole again.
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda s: parse_batch(s, height, width, plate_length, tight),
                          num_parallel_calls=AUTOTUNE)
    return through_service(dataset, service, batch_size)


def find_corrupt_file(files: list[str]) -> str | None:
    """The first file with a record that fails to read (bad CRC, truncation), or None.

    tf.data reports a DataLossError without saying which of the interleaved files broke:
    reading each file alone tells.
    """
    for path in files:
        try:
            tf.data.TFRecordDataset(path).reduce(0, lambda count, _: count + 1)
        except tf.errors.DataLossError:
            return path
    return None


def check_shards(info: dict, records_dir: str, split: str) -> dict[str, str]:
    """Shards of a split that are missing, or whose bytes differ from dataset_info.json.

    tf.data does not check the CRC of a record's data, so a flipped byte inside an image would
    train silently: the sha256 written with the records is the check. About 1 GB/s.
    """
    problems = {}
    for shard in info["splits"][split]["shards"]:
        path = os.path.join(records_dir, shard["name"])
        problem = file_problem(path, shard["sha256"])
        if problem:
            problems[path] = problem
    return problems


def file_problem(path: str, sha256: str) -> str | None:
    """"missing" or "corrupt (...)" when a file dataset_info.json lists is not as written."""
    if not tf.io.gfile.exists(path):
        return "missing"
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        return "corrupt (its sha256 differs from dataset_info.json)"
    return None


def readable_files(info: dict, records_dir: str, split: str,
                   skip_corrupt: bool) -> tuple[list[str], int]:
    """The split's shards to read, and how many records the skipped shards held.

    Raises:
      ValueError: a shard is missing or corrupt and skip_corrupt is off, or no shard is left.
    """
    problems = check_shards(info, records_dir, split)
    if problems and not skip_corrupt:
        path, problem = next(iter(problems.items()))
        raise ValueError(f"{path} is {problem}: rewrite the records with bin/make_records "
                         "--overwrite, or pass --skip_corrupt to leave it out")
    files = [path for path in records.split_files(info, records_dir, split)
             if path not in problems]
    if not files:
        raise ValueError(f"every shard of split {split!r} in {records_dir} is missing or corrupt")
    lost = sum(shard["num_examples"] for shard in info["splits"][split]["shards"]
               if os.path.join(records_dir, shard["name"]) in problems)
    return files, lost
