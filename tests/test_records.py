"""records.py and writer.py: the schema read back by TensorFlow, shards, metadata, label sets."""

import collections
import glob
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_COUNTS, TINY_SHARDS
from plate_ocr.data import atlas, records, writer


def _split_paths(records_dir: str, split: str) -> list[str]:
    return records.split_files(records.read_info(records_dir), records_dir, split)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_example_round_trips_through_tensorflow(tmp_path, read_examples):
    image = np.random.default_rng(0).integers(0, 256, (64, 128), dtype=np.uint8)
    rows = [([1, 2, 3, 4, 9], "12349", "DejaVu Sans Bold", 25, -3),
            ([0, 0, 0, 0, 0], "00000", "Fira Code Retina", 18, 8)]
    path = str(tmp_path / "two.tfrecord")
    with open(path, "wb") as f:
        for label, text, font, size, spacing in rows:
            f.write(records.frame_record(
                records.encode_example(image, label, text, font, size, spacing)))
    examples = read_examples([path])
    assert len(examples) == 2
    for example, (label, text, font, size, spacing) in zip(examples, rows):
        assert np.frombuffer(example["image"], np.uint8).reshape(64, 128).tolist() == image.tolist()
        assert (example["label"], example["text"], example["font"]) == (label, text, font)
        assert (example["font_size"], example["spacing"]) == (size, spacing)


def test_tensorflow_rejects_a_record_with_a_flipped_byte(tmp_path):
    record = bytearray(records.frame_record(records.encode_example(
        np.zeros((64, 128), np.uint8), [1, 2, 3, 4, 5], "12345", "Face", 20, 0)))
    record[40] ^= 1  # inside the data: the CRC TensorFlow checks must catch it
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(record))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))


def test_shard_names_follow_the_tfds_pattern(tiny_records):
    assert records.shard_name("train", 0, 16) == "plates-train.tfrecord-00000-of-00016"
    names = sorted(os.listdir(tiny_records))
    expected = sorted([records.INFO_NAME, atlas.ATLAS_NAME] + [
        records.shard_name(split, shard, TINY_SHARDS[split])
        for split in records.SPLITS for shard in range(TINY_SHARDS[split])])
    assert names == expected  # and no temporaries left behind


def test_a_file_appears_only_once_whole(tmp_path):
    with records.whole_file(str(tmp_path), "done.bin") as f:
        f.write(b"all of it")
    with pytest.raises(OSError):
        with records.whole_file(str(tmp_path), "broken.bin") as f:
            f.write(b"half")
            raise OSError("disk full")
    assert os.listdir(tmp_path) == ["done.bin"]
    assert (tmp_path / "done.bin").read_bytes() == b"all of it"


def test_shard_counts_and_checksums_match_the_metadata(tiny_records):
    info = records.read_info(tiny_records)
    assert (info["image_height"], info["image_width"]) == (64, 128)
    assert (info["alphabet"], info["plate_length"], info["seed"]) == ("0123456789", 5, 0)
    for split in records.SPLITS:
        shards = info["splits"][split]["shards"]
        assert info["splits"][split]["num_examples"] == TINY_COUNTS[split]
        assert sum(shard["num_examples"] for shard in shards) == TINY_COUNTS[split]
        for shard in shards:
            path = os.path.join(tiny_records, shard["name"])
            assert sum(1 for _ in tf.data.TFRecordDataset(path)) == shard["num_examples"]
            assert _sha256(path) == shard["sha256"]


def test_labels_are_distinct_and_splits_disjoint(tiny_records, read_examples):
    texts = {split: [e["text"] for e in read_examples(_split_paths(tiny_records, split))]
             for split in records.SPLITS}
    assert {split: len(t) for split, t in texts.items()} == TINY_COUNTS
    for split in ("train", "val", "test"):
        assert len(set(texts[split])) == len(texts[split]), split
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    assert texts["heldout"] == texts["test"][:TINY_COUNTS["heldout"]]
    assert texts["test_aug"] == texts["test"][:TINY_COUNTS["test_aug"]]
    assert texts["val_aug"] == texts["val"][:TINY_COUNTS["val_aug"]]


def test_examples_match_their_text_and_style(tiny_records, read_examples, faces):
    names = {split: {face.name for face in faces[split]} for split in ("train", "heldout")}
    for split in records.SPLITS:
        examples = read_examples(_split_paths(tiny_records, split))
        fonts_used = {e["font"] for e in examples}
        assert fonts_used <= names["heldout" if split == "heldout" else "train"], split
        for e in examples:
            assert e["label"] == [int(c) for c in e["text"]]
            assert 18 <= e["font_size"] <= 25 and 0 <= e["spacing"] <= 8
            image = np.frombuffer(e["image"], np.uint8).reshape(64, 128)
            if split not in writer.PlateStyle.augmented_splits:  # backgrounds, borders, noise
                assert min(image[:2].min(), image[-2:].min(), image[:, :2].min(),
                           image[:, -2:].min()) == 255  # the 2-pixel margin stays blank
    train_fonts = {e["font"] for e in read_examples(_split_paths(tiny_records, "train"))}
    assert len(train_fonts) > 50  # 200 plates draw from many faces, not a few


def test_draw_labels_refuses_more_labels_than_exist():
    counts = {"train": 99000, "val": 1000, "test": 1000, "heldout": 0}
    with pytest.raises(ValueError, match="= 101000 plates need distinct labels.*only 100000"):
        records.draw_labels(counts, "0123456789", [5], 0)
    counts = {"train": 98000, "val": 1000, "test": 1000, "heldout": 0}
    labels = records.draw_labels(counts, "0123456789", [5], 0)
    assert len(np.unique(np.concatenate([labels[s] for s in ("train", "val", "test")]))) == 100000


def test_labels_of_several_lengths_are_distinct_mixed_and_read_back():
    counts = {"train": 1200, "val": 300, "test": 300, "val_aug": 100}
    labels = records.draw_labels(counts, "0123456789", [4, 2, 3], 0)
    drawn = np.concatenate([labels[split] for split in ("train", "val", "test")])
    assert len(np.unique(drawn)) == 1800
    digits = {split: [records.label_digits(n, "0123456789", [2, 3, 4]) for n in labels[split]]
              for split in labels}
    read = [d for split in ("train", "val", "test") for d in digits[split]]
    # As even as the lengths allow: the 100 two-digit labels, then half the rest each.
    assert collections.Counter(map(len, read)) == {2: 100, 3: 850, 4: 850}
    assert len({tuple(d) for d in read}) == 1800  # distinct as digits too
    assert {len(d) for d in digits["test"]} == {2, 3, 4}  # every split mixes them
    assert digits["val_aug"] == digits["val"][:100]
    again = records.draw_labels(counts, "0123456789", [2, 3, 4], 0)
    assert all(np.array_equal(labels[s], again[s]) for s in labels)
    assert records.length_shares(7, "01", [1, 2, 3]) == [2, 2, 3]
    with pytest.raises(ValueError, match="2/3 positions allow only 1100"):
        records.draw_labels({"train": 1101, "val": 0, "test": 0}, "0123456789", [3, 2], 0)


def test_draw_labels_refuses_more_derived_plates_than_their_split_has():
    counts = {"train": 10, "val": 0, "test": 5, "heldout": 6}
    with pytest.raises(ValueError, match="must not exceed --num_test"):
        records.draw_labels(counts, "0123456789", [5], 0)
    counts = {"train": 10, "val": 3, "test": 5, "val_aug": 4}
    with pytest.raises(ValueError, match="--num_val_aug .4. must not exceed --num_val .3."):
        records.draw_labels(counts, "0123456789", [5], 0)


def test_same_seed_writes_identical_files(tiny_records, write_records, tmp_path):
    info = write_records(str(tmp_path))
    first = records.read_info(tiny_records)
    for split in records.SPLITS:
        assert info["splits"][split] == first["splits"][split]


@pytest.mark.slow
def test_records_do_not_depend_on_shards_or_workers(tiny_records, write_records, tmp_path,
                                                    read_examples):
    # workers=2 spawns real processes: the plates must still come out in the same order.
    write_records(str(tmp_path), shards={"train": 3, "val": 1, "test": 3, "heldout": 1,
                                         "test_aug": 2, "val_aug": 2}, workers=2)
    for split in records.SPLITS:
        expected = [e["serialized"] for e in read_examples(_split_paths(tiny_records, split))]
        written = [e["serialized"] for e in read_examples(_split_paths(str(tmp_path), split))]
        assert written == expected, split
    assert not glob.glob(str(tmp_path / ".*"))  # temporaries renamed or removed


def test_another_seed_writes_other_plates(tiny_records, write_records, tmp_path, read_examples):
    info = write_records(str(tmp_path), seed=1)
    first = records.read_info(tiny_records)
    assert info["seed"] == 1
    for split in records.SPLITS:
        digests = [shard["sha256"] for shard in info["splits"][split]["shards"]]
        assert not set(digests) & {s["sha256"] for s in first["splits"][split]["shards"]}
    texts = {e["text"] for e in read_examples(_split_paths(str(tmp_path), "train"))}
    first_texts = {e["text"] for e in read_examples(_split_paths(tiny_records, "train"))}
    assert texts != first_texts


def test_read_info_explains_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="write the records first with bin/make_records"):
        records.read_info(str(tmp_path))
