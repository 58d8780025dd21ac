"""bin/make_records as a user runs it: the summary, one-line errors, and a kill mid-shard."""

import contextlib
import glob
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import PROJECT_DIR
from plate_ocr.data import atlas, records

MAKE_RECORDS = os.path.join(PROJECT_DIR, "bin", "make_records")
SMALL = ["--num_train", "200", "--num_val", "20", "--num_test", "20", "--num_heldout", "10",
         "--shards", "2", "--workers", "2"]


def _make_records(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE_RECORDS, *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_records: error: "), result.stderr
    assert fragment in lines[0]


def _shard_files(output_dir: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "plates-*")))


def _temporaries(output_dir: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, ".plates-*")))


@pytest.mark.slow
def test_writes_records_then_refuses_to_overwrite_them(tmp_path, font_dir):
    output_dir = str(tmp_path / "records")
    result = _make_records("--output_dir", output_dir, *SMALL)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"wrote 330 plates \(train 200, val 20, test 20, heldout 10, test_aug 20, val_aug 20, "
        rf"foreign 20, captcha 20\) "
        rf"to "
        rf"{output_dir} in "
        r"[\d.]+ s \([\d,]+ plates/s, 2 workers, \d+ MB per worker\)\n", result.stdout)
    info = records.read_info(output_dir)
    assert info["flags"]["num_train"] == 200 and info["flags"]["workers"] == 2
    # train 2 + 2 for each of val, test, heldout, test_aug, val_aug, foreign and captcha (both
    # shrunk to 20 plates)
    assert len(_shard_files(output_dir)) == 16
    before = {name: os.path.getmtime(os.path.join(output_dir, name))
              for name in os.listdir(output_dir)}

    again = _make_records("--output_dir", output_dir, *SMALL)
    _assert_one_line_error(again, "already holds finished records")
    assert "--overwrite" in again.stderr
    assert {name: os.path.getmtime(os.path.join(output_dir, name))
            for name in os.listdir(output_dir)} == before

    replaced = _make_records("--output_dir", output_dir, "--overwrite", "--seed", "1",
                             "--num_train", "30", "--num_val", "0", "--num_test", "0",
                             "--num_heldout", "0", "--shards", "1", "--workers", "0")
    assert replaced.returncode == 0, replaced.stderr
    assert _shard_files(output_dir) == ["plates-train.tfrecord-00000-of-00001"]
    assert records.read_info(output_dir)["seed"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["--shards", "0"], "flag --shards=0"),
    (["--num_train", "99000", "--num_val", "1000", "--num_test", "1000"], "allow only 100000"),
    (["--font_size_max", "100"], "pixels tall, more than the plate allows"),
    # Wide enough to force overlapping glyphs, though not too tall: refused, not squeezed.
    (["--font_size_max", "40"], "do not fit 124 pixels with --spacing_min 0"),
    (["--font_dir", "{empty}"], "no font manifest at"),
    (["--num_train", "10", "stray"], "unexpected arguments: stray"),
    (["--num_test", "10", "--num_foreign", "20"], "--num_foreign (20) must not exceed --num_test"),
    (["--num_test", "10", "--num_foreign", "0", "--num_captcha", "11"],
     "--num_captcha (11) must not exceed --num_test (10): its plates reuse test labels"),
    (["--plate_lengths", "4,x"], "--plate_lengths must be whole numbers of at least 1: got 4,x"),
    (["--plate_lengths", "1,2", "--num_train", "101", "--num_val", "5", "--num_test", "5"],
     "10 characters x 1/2 positions allow only 110"),
    # Eight characters at size 25 do not fit the plate: refused as a font that is too wide.
    (["--plate_lengths", "5,8"], "8 glyphs of"),
])
def test_bad_input_ends_with_one_line_and_status_2(tmp_path, font_dir, args, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    output_dir = str(tmp_path / "records")
    result = _make_records("--output_dir", output_dir,
                           *[arg.format(empty=empty) for arg in args])
    _assert_one_line_error(result, fragment)
    assert not os.path.exists(output_dir) or not os.listdir(output_dir)


@pytest.mark.slow
def test_a_writer_killed_mid_shard_leaves_only_complete_shards(tmp_path, font_dir):
    import tensorflow as tf  # to count records the way training will read them
    output_dir = str(tmp_path / "records")
    # One worker writes four shards of 2,000 plates in turn: kill it as soon as a shard has a
    # final name. A correct writer is then writing the next one under a temporary name; a
    # writer that used final names from the start is caught with a partial shard.
    process = subprocess.Popen(
        [MAKE_RECORDS, "--output_dir", output_dir, "--num_train", "8000", "--num_val", "0",
         "--num_test", "0", "--num_heldout", "0", "--shards", "4", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _shard_files(output_dir):
            assert process.poll() is None, "make_records ended before it could be killed"
            assert time.monotonic() < deadline, "no shard written in 60 s"
            time.sleep(0.01)
        # The next shard's temporary appears within milliseconds: kill mid-shard, not between.
        # Waited for, however long the machine takes; the deadline only catches a writer that
        # never makes one.
        deadline = time.monotonic() + 120
        while not _temporaries(output_dir):
            assert process.poll() is None, "make_records ended before it could be killed"
            assert time.monotonic() < deadline, "no temporary shard after the first one"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the worker too: same process group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    names = os.listdir(output_dir)
    assert records.INFO_NAME not in names
    finished = _shard_files(output_dir)
    assert finished and len(finished) < 4
    for name in finished:
        count = sum(1 for _ in tf.data.TFRecordDataset(os.path.join(output_dir, name)))
        assert count == 2000, name
    # The glyph atlas is the worker's first task: it is whole by the time a shard is.
    assert atlas.ATLAS_NAME in names
    unfinished = [name for name in names if name not in finished and name != atlas.ATLAS_NAME]
    assert unfinished and unfinished == _temporaries(output_dir)

    # The same command again, without --overwrite: the killed run's files are replaced,
    # temporaries included, and the shards are those of a run that was never killed.
    rerun = _make_records("--output_dir", output_dir, "--num_train", "8000", "--num_val", "0",
                          "--num_test", "0", "--num_heldout", "0", "--shards", "4",
                          "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert not _temporaries(output_dir)
    assert len(_shard_files(output_dir)) == 4
    clean_dir = str(tmp_path / "clean")
    clean = _make_records("--output_dir", clean_dir, "--num_train", "8000", "--num_val", "0",
                          "--num_test", "0", "--num_heldout", "0", "--shards", "4")
    assert clean.returncode == 0, clean.stderr
    for key in ("splits", "glyph_atlas"):
        assert records.read_info(output_dir)[key] == records.read_info(clean_dir)[key]
