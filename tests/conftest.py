"""Shared fixtures: the project's fonts and a tiny records dir written by the real writer."""

import os

import pytest

from plate_ocr.data import fonts, records, writer

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHABET = "0123456789"
MIN_FONT_FAMILIES = 22  # the make_records default: the tiny dataset uses the real font set
TINY_COUNTS = {"train": 200, "val": 40, "test": 40, "heldout": 20, "test_aug": 10, "val_aug": 10}
TINY_SHARDS = {"train": 4, "val": 2, "test": 2, "heldout": 2, "test_aug": 1, "val_aug": 1}
# Fixtures that take seconds of TensorFlow to build (a trained model, servers): under
# pytest-xdist (bin/test: --dist loadgroup) the tests that use one run on the same worker,
# which builds it once, instead of on every worker.
SHARED_FIXTURES = ("reading_model", "trained", "service", "untrained_model")


# Before pytest-xdist's hook of the same name, which reads the marks (it appends each test's
# group to its id, what --dist loadgroup schedules by).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        shared = [name for name in SHARED_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


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
        labels = records.draw_labels(counts, style.alphabet, style.lengths, seed)
        return writer.write_dataset(output_dir, labels, shards, faces, style, seed, workers)
    return write


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory, write_records) -> str:
    """A finished records dir of 360 plates (seed 0, in this process): its path."""
    output_dir = str(tmp_path_factory.mktemp("tiny_records"))
    write_records(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def reading_model(tmp_path_factory, faces) -> tuple[str, str]:
    """A small model that has learned to read: (model dir, records dir).

    400 steps (~30 s here) on 32x64 plates of one face at one size, which it then reads
    right and sure (confidence ~0.9): what the reject threshold must keep, beside images
    that are no plate, which it must reject. A smoke model reads nothing, so it would reject
    every plate and prove nothing.
    """
    from plate_ocr.data import render
    from plate_ocr.training import train
    import tensorflow as tf
    records_dir = str(tmp_path_factory.mktemp("reading_records"))
    style = writer.PlateStyle(font_size_min=11, font_size_max=11, spacing_min=1, spacing_max=1,
                              spec=render.PlateSpec(height=32, width=64))
    counts = {"train": 2000, "val": 100, "test": 200, "heldout": 10, "test_aug": 10,
              "val_aug": 10}
    labels = records.draw_labels(counts, style.alphabet, style.lengths, 0)
    writer.write_dataset(records_dir, labels, {split: 1 for split in counts},
                         {"train": faces["train"][:1], "heldout": faces["heldout"][:1]},
                         style, 0, 0)
    model_dir = str(tmp_path_factory.mktemp("reading_model"))
    train.train_and_evaluate(reading_config(records_dir), model_dir,
                             tf.distribute.OneDeviceStrategy("/cpu:0"))
    return model_dir, records_dir


def reading_config(records_dir: str):
    """reading_model's training configuration (a TrainConfig) on records_dir."""
    from plate_ocr.training import model, trainer
    return trainer.TrainConfig(
        records_dir=records_dir,
        model=model.ModelConfig(stem_filters=16, conv_filters=(32, 48, 64), pool_widths=(1, 1, 1),
                                dense_units=64, rnn_units=64, batch_norm_momentum=0.9),
        batch_size=32, eval_batch_size=100, learning_rate=6e-3, lr_schedule="cosine",
        warmup_steps=50, epochs=2, steps_per_epoch=200, steps_per_loop=50, patience=2,
        shuffle_buffer=2000, num_image_summaries=2, ema_momentum=0.9, align_steps=300)


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
