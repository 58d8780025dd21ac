"""captcha_split.py: the captcha package's plates, byte-reproducible per seed, and their split."""

import hashlib
import os
import subprocess

import numpy as np
import pytest

from conftest import ALPHABET, PROJECT_DIR
from plate_ocr.data import captcha_split, records

MAKE_RECORDS = os.path.join(PROJECT_DIR, "bin", "make_records")
NUMBERS = [37463, 0, 99999, 12345, 70801, 4, 55555, 31337, 80008, 2718, 16180, 42]


def _metadata(output_dir: str, seed: int) -> dict:
    """A finished dataset with no split yet: what make_records hands add_split."""
    info = {"seed": seed, "alphabet": ALPHABET, "plate_length": 5, "image_height": 64,
            "image_width": 128, "splits": {}, "fonts": {}}
    records.write_info(output_dir, info)
    return records.read_info(output_dir)


def _shard_bytes(output_dir: str) -> dict[str, bytes]:
    return {name: open(os.path.join(output_dir, name), "rb").read()
            for name in sorted(os.listdir(output_dir)) if name.startswith("plates-captcha")}


def test_shards_are_byte_identical_for_a_seed_and_differ_for_another(tmp_path):
    shards = {}
    for run, seed in (("first", 0), ("again", 0), ("other", 1)):
        output_dir = str(tmp_path / run)
        os.makedirs(output_dir)
        progress = []
        info = captcha_split.add_split(output_dir, _metadata(output_dir, seed), NUMBERS * 3, 2,
                                       progress.append)
        assert sum(progress) == 36
        shards[run] = _shard_bytes(output_dir)
        assert [s["name"] for s in info["splits"]["captcha"]["shards"]] == list(shards[run])
    assert list(shards["first"]) == ["plates-captcha.tfrecord-00000-of-00002",
                                     "plates-captcha.tfrecord-00001-of-00002"]
    assert shards["first"] == shards["again"]
    # Every shard differs: the package's randomness follows the seed, not the OS's generator.
    assert all(shards["first"][name] != shards["other"][name] for name in shards["first"])


def test_a_plate_is_a_function_of_seed_and_index_alone():
    from captcha import image as captcha_image
    secrets_module = captcha_image.secrets
    images, details = captcha_split.render_captcha(NUMBERS, 0, ALPHABET, [5])
    assert captcha_image.secrets is secrets_module  # given back after each plate
    assert images.dtype == np.uint8 and images.shape == (len(NUMBERS), 64, 128)
    assert [text for text, *_ in details] == [f"{n:05d}" for n in NUMBERS]
    assert all(font == "DroidSansMono" and 20 < size < 60 for _, font, size, _ in details)
    # However the split is cut into shards and chunks: the same plate for the same index.
    middle, _ = captcha_split.render_captcha(NUMBERS[4:9], 0, ALPHABET, [5], first_index=4)
    np.testing.assert_array_equal(middle, images[4:9])
    # Not blank: a light background (padded with it) and darker ink.
    for image in images:
        assert np.median(image) > 200 and image.min() < 150


@pytest.mark.slow
def test_make_records_writes_a_captcha_split_of_test_labels_that_evaluate_reads(tmp_path,
                                                                                font_dir):
    from plate_ocr.serving import evaluate
    from plate_ocr.training import input_pipeline
    output_dir = str(tmp_path / "records")
    result = subprocess.run(
        [MAKE_RECORDS, "--output_dir", output_dir, "--num_train", "60", "--num_val", "10",
         "--num_test", "30", "--num_heldout", "0", "--num_test_aug", "0", "--num_val_aug", "0",
         "--num_foreign", "0", "--num_captcha", "24", "--shards", "1", "--eval_shards", "2",
         "--workers", "0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "foreign 0, captcha 24)" in result.stdout
    info = records.read_info(output_dir)
    split = info["splits"][captcha_split.SPLIT]
    assert split["num_examples"] == 24 and len(split["shards"]) == 2
    assert split["labels_from"] == "test" and split["renderer"] == "captcha 0.7.1"
    assert info["flags"]["num_captcha"] == 24
    assert info["fonts"]["captcha"] == [captcha_split.FONT]
    for shard in split["shards"]:
        with open(os.path.join(output_dir, shard["name"]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
    assert input_pipeline.check_shards(info, output_dir, captcha_split.SPLIT) == {}
    plates = list(evaluate.read_split(output_dir, captcha_split.SPLIT, batch_size=10))
    test = list(evaluate.read_split(output_dir, "test"))
    assert sum((b["text"] for b in plates), []) == sum((b["text"] for b in test), [])[:24]
    images = np.concatenate([batch["image"] for batch in plates])
    assert images.dtype == np.uint8 and images.shape == (24, 64, 128)
    # The same labels and seed drawn in this process: the same pixels.
    numbers = records.draw_labels({"train": 60, "val": 10, "test": 30}, ALPHABET, [5], 0)["test"]
    expected, _ = captcha_split.render_captcha(numbers[:24], 0, ALPHABET, [5])
    np.testing.assert_array_equal(images, expected)


def test_a_missing_captcha_package_is_one_error_line(tmp_path, font_dir):
    # A `captcha` that fails to import, ahead of the installed one on the path.
    package = tmp_path / "shadow" / "captcha"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('No module named captcha')\n")
    result = subprocess.run(
        [MAKE_RECORDS, "--output_dir", str(tmp_path / "records"), "--num_train", "20",
         "--num_val", "0", "--num_test", "10", "--num_heldout", "0", "--num_foreign", "0",
         "--workers", "0"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "shadow")))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("make_records: error: the captcha package, which draws the captcha "
                           "split, cannot be imported (No module named captcha)")
    assert line.endswith("run bin/setup, or pass --num_captcha 0")
    assert not os.path.exists(tmp_path / "records") or not os.listdir(tmp_path / "records")
