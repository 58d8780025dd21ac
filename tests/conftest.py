"""Shared fixtures: the project's fonts and a tiny records dir written by the real writer."""

import os

import pytest

from plate_ocr import fonts, records, writer

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHABET = "0123456789"
MIN_FONT_FAMILIES = 22  # the make_records default: the tiny dataset uses the real font set
TINY_COUNTS = {"train": 200, "val": 40, "test": 40, "heldout": 20, "test_aug": 10, "val_aug": 10}
TINY_SHARDS = {"train": 4, "val": 2, "test": 2, "heldout": 2, "test_aug": 1, "val_aug": 1}


@pytest.fixture(scope="session")
def font_dir() -> str:
    """The project's fonts/ folder; skips the test when bin/setup has not gathered the fonts."""
    path = os.path.join(PROJECT_DIR, "fonts")
    gathered = [name for name in os.listdir(path) if name != fonts.MANIFEST_NAME]
    if not gathered:
        pytest.skip(f"no font files gathered in {path}: run bin/setup")
    return path


@pytest.fixture(scope="session")
def faces(font_dir) -> dict[str, list[fonts.Face]]:
    """The verified train and heldout faces, as make_records finds them."""
    train, _ = fonts.usable_faces(font_dir, ALPHABET, fonts.TRAIN, MIN_FONT_FAMILIES)
    heldout, _ = fonts.usable_faces(font_dir, ALPHABET, fonts.HELDOUT, 1)
    return {"train": train, "heldout": heldout}


@pytest.fixture(scope="session")
def write_records(faces):
    """A function that writes a small dataset with writer.write_dataset and returns its info."""
    def write(output_dir: str, seed: int = 0, counts: dict[str, int] = TINY_COUNTS,
              shards: dict[str, int] = TINY_SHARDS, workers: int = 0,
              style: writer.PlateStyle = writer.PlateStyle()) -> dict:
        labels = records.draw_labels(counts, style.alphabet, style.plate_length, seed)
        return writer.write_dataset(output_dir, labels, shards, faces, style, seed, workers)
    return write


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory, write_records) -> str:
    """A finished records dir of 360 plates (seed 0, in this process): its path."""
    output_dir = str(tmp_path_factory.mktemp("tiny_records"))
    write_records(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def read_examples():
    """A function that parses TFRecord files with TensorFlow into a list of plain dicts."""
    import tensorflow as tf  # here, so tests that never read records do not pay its import

    def read(paths: list[str], plate_length: int = 5) -> list[dict]:
        kinds = {"bytes": tf.io.FixedLenFeature([], tf.string),
                 "int64": tf.io.FixedLenFeature([], tf.int64),
                 # Fixed length: a label of any other length fails to parse.
                 "int64_list": tf.io.FixedLenFeature([plate_length], tf.int64)}
        spec = {key: kinds[kind] for key, kind in records.FEATURES.items()}
        examples = []
        for serialized in tf.data.TFRecordDataset(paths):
            parsed = tf.io.parse_single_example(serialized, spec)
            example = {key: value.numpy() for key, value in parsed.items()}
            for key in ("text", "font"):
                example[key] = example[key].decode()
            example["label"] = example["label"].tolist()
            example["serialized"] = serialized.numpy()
            examples.append(example)
        return examples
    return read
