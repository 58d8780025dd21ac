"""The one tf.train.Example schema, TFRecord framing, label sets and the dataset metadata.

Writers run in worker processes that must not import TensorFlow (seconds of start-up and
hundreds of MB each), so Examples are encoded here directly in the protobuf wire format and
framed as TFRecords; tests parse them back with TensorFlow to prove the format.
"""

import contextlib
import hashlib
import json
import os
import struct
from typing import Iterable, Sequence

import crc32c
import numpy as np

INFO_NAME = "dataset_info.json"
INFO_VERSION = 10  # 2: the test_aug split and the augmentation in plate_style; 3: its contrast floor;
# 4: perspective in ink-box heights, strokes half a pixel each side; 5: the wide augmentation
# (augment.py's TF ops: scale, position, box on a page, marks, resampling, motion blur);
# 6: elastic bends, wear, speckle, scratches, wave patterns, thinner strokes on large text;
# 7: more text scaled up, to 5x (frame-filling crops); 8: text scaled up sharpened;
# 9: each character turned, resized and moved its own way (glyph_*); 10: 1s and 7s turned one
# way only (glyph_clockwise, glyph_anticlockwise)
# heldout: test labels in held-out font families; test_aug: test labels, augmented plates;
# val_aug: validation labels, augmented plates (what an augmented training run validates on).
# New splits go last: a split's index seeds its plates (writer.plate_rng).
SPLITS = ("train", "val", "test", "heldout", "test_aug", "val_aug")
# The splits that reuse the first labels of another, so their accuracy differs from that
# split's by the fonts or the augmentation alone.
DERIVED_SPLITS = {"heldout": "test", "test_aug": "test", "val_aug": "val"}
# The foreign split reads the first test labels too, but Cairo draws it (foreign.add_split)
# after the writer has rendered these: it is in dataset_info.json's splits, not in SPLITS.
_LABEL_STREAM = 4  # spawn key of the label draw (apart from every split's plate streams)
# A label shorter than the dataset's plate_length (its longest) ends in PAD: records of plates
# of several lengths (dataset_info.json's "plate_lengths": make_records --plate_lengths, or
# imported plates).
PAD = -1
# Feature keys and kinds of the schema: the parsing side builds its spec from these.
FEATURES = {"image": "bytes", "label": "int64_list", "text": "bytes", "font": "bytes",
            "font_size": "int64", "spacing": "int64"}


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """TFDS-style file name of one shard."""
    return f"plates-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(kind: str, value) -> bytes:
    if kind == "bytes":  # Feature.bytes_list = 1 { repeated bytes value = 1 }
        return _length_delimited(1, _length_delimited(1, value))
    values = value if kind == "int64_list" else [value]
    packed = b"".join(_varint(int(v)) for v in values)  # Feature.int64_list = 3, packed
    return _length_delimited(3, _length_delimited(1, packed))


def encode_features(values: dict[str, tuple[str, object]]) -> bytes:
    """Serializes a tf.train.Example from {key: (kind, value)}, kind "bytes", "int64" or
    "int64_list"."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, key.encode())
                          + _length_delimited(2, _feature(kind, value)))
        for key, (kind, value) in values.items())
    return _length_delimited(1, entries)  # Example.features = 1 { map feature = 1 }


def encode_example(image: np.ndarray, label: list[int], text: str, font: str,
                   font_size: int, spacing: int) -> bytes:
    """Serializes one plate as a tf.train.Example (the FEATURES schema)."""
    values = {"image": image.tobytes(), "label": label, "text": text.encode(),
              "font": font.encode(), "font_size": font_size, "spacing": spacing}
    return encode_features({key: (kind, values[key]) for key, kind in FEATURES.items()})


def _masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


TEMPORARY_GLOB = ".*.tmp-*"  # what whole_file leaves behind when its process is killed


@contextlib.contextmanager
def whole_file(output_dir: str, name: str):
    """A binary file to write that appears under its name only once whole.

    Written as `.NAME.tmp-PID`, flushed to disk, then renamed; removed on an error, so a
    crash or a full disk never leaves a partial file that looks finished.

    Yields:
      the open temporary file.
    """
    temporary = os.path.join(output_dir, f".{name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, os.path.join(output_dir, name))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_shard_file(output_dir: str, name: str, examples: Iterable[bytes]) -> str:
    """Frames serialized Examples as TFRecords into one shard (whole_file: renamed once
    whole); the sha256 of what it wrote, for dataset_info.json."""
    digest = hashlib.sha256()
    with whole_file(output_dir, name) as f:
        for example in examples:
            record = frame_record(example)
            f.write(record)
            digest.update(record)
    return digest.hexdigest()


def shard_bounds(count: int, num_shards: int) -> list[int]:
    """Where each of num_shards shards of `count` examples starts, and the end: as even as
    whole examples allow."""
    return [count * i // num_shards for i in range(num_shards + 1)]


def label_population(alphabet: str, plate_length: int) -> int:
    """How many distinct plates the alphabet and length allow."""
    return len(alphabet) ** plate_length


def length_shares(distinct: int, alphabet: str, lengths: Sequence[int]) -> list[int]:
    """How many of `distinct` labels each plate length gets: as even as the lengths'
    populations allow (a short length with fewer plates than its share leaves the rest to
    the longer ones).

    Raises:
      ValueError: more labels asked for than the alphabet and lengths allow.
    """
    populations = [label_population(alphabet, length) for length in lengths]
    if distinct > sum(populations):
        raise ValueError(f"train + val + test = {distinct} plates need distinct labels, but "
                         f"{len(alphabet)} characters x {'/'.join(map(str, lengths))} "
                         f"positions allow only {sum(populations)}")
    shares, left = [0] * len(lengths), distinct
    for rank, i in enumerate(sorted(range(len(lengths)), key=populations.__getitem__)):
        shares[i] = min(populations[i], left // (len(lengths) - rank))
        left -= shares[i]
    return shares


def draw_labels(counts: dict[str, int], alphabet: str, lengths: Sequence[int],
                seed: int) -> dict[str, np.ndarray]:
    """Distinct label numbers per split; train, val and test are pairwise disjoint.

    A label number reads as label_digits(number, alphabet, lengths): with several plate
    lengths (sorted), each length's numbers follow the shorter lengths' populations, and
    each split mixes the lengths in the shares of length_shares. The DERIVED_SPLITS reuse the
    first labels of theirs (`heldout` and `test_aug` the test split's, `val_aug` the
    validation split's); a count left out is 0.

    Raises:
      ValueError: more labels asked for than the alphabet and lengths allow.
    """
    lengths = sorted(lengths)
    distinct = counts["train"] + counts["val"] + counts["test"]
    shares = length_shares(distinct, alphabet, lengths)
    for split, base in DERIVED_SPLITS.items():
        if counts.get(split, 0) > counts[base]:
            raise ValueError(f"--num_{split} ({counts[split]}) must not exceed --num_{base} "
                             f"({counts[base]}): its plates reuse {base} labels")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM,)))
    if len(lengths) == 1:
        numbers = rng.choice(label_population(alphabet, lengths[0]), size=distinct,
                             replace=False)
    else:
        offsets = np.cumsum([0] + [label_population(alphabet, n) for n in lengths[:-1]])
        numbers = rng.permutation(np.concatenate([
            offset + rng.choice(label_population(alphabet, length), size=share, replace=False)
            for offset, length, share in zip(offsets, lengths, shares)]))
    bounds = np.cumsum([0, counts["train"], counts["val"], counts["test"]])
    labels = {split: numbers[bounds[i]:bounds[i + 1]] for i, split in enumerate(SPLITS[:3])}
    for split, base in DERIVED_SPLITS.items():
        labels[split] = labels[base][:counts.get(split, 0)]
    return labels


def label_digits(number: int, alphabet: str, lengths: Sequence[int]) -> list[int]:
    """Label number -> alphabet indices, most significant first (leading zeros kept); with
    several lengths, numbers count on from one length's population to the next's
    (draw_labels)."""
    number = int(number)
    for length in sorted(lengths):
        population = label_population(alphabet, length)
        if number < population or length == max(lengths):
            break
        number -= population
    digits = []
    for _ in range(length):
        number, digit = divmod(number, len(alphabet))
        digits.append(digit)
    return digits[::-1]


def plate_lengths(info: dict) -> list[int]:
    """The characters a plate may have, shortest first: dataset_info.json's (or a run's
    config.json's) "plate_lengths", or its one "plate_length"."""
    return sorted(info.get("plate_lengths") or [info["plate_length"]])


def padded_label(label: list[int], plate_length: int) -> list[int]:
    """A label of up to plate_length characters, ended with PAD to that length."""
    return list(label) + [PAD] * (plate_length - len(label))


def write_info(output_dir: str, info: dict) -> None:
    """Writes the metadata atomically: it is the last file of a finished dataset."""
    path = os.path.join(output_dir, INFO_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(dict(info, version=INFO_VERSION), f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def read_info(records_dir: str) -> dict:
    """Reads and checks dataset_info.json.

    Raises:
      FileNotFoundError, ValueError: with a one-line message.
    """
    path = os.path.join(records_dir, INFO_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {INFO_NAME} in {records_dir}: write the records first "
                                f"with bin/make_records --output_dir {records_dir}")
    with open(path, encoding="utf-8") as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
    if info.get("version") != INFO_VERSION:
        raise ValueError(f"{path} has version {info.get('version')}, this code reads "
                         f"version {INFO_VERSION}: rewrite the records with bin/make_records")
    return info


def split_files(info: dict, records_dir: str, split: str) -> list[str]:
    """Paths of one split's shards, in order."""
    if split not in info["splits"]:
        raise ValueError(f"split {split!r} is not in the records (have: "
                         f"{', '.join(info['splits'])})")
    return [os.path.join(records_dir, shard["name"]) for shard in info["splits"][split]["shards"]]
