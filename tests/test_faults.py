"""Faults a user meets: corrupt or changed shards, bad metadata, full disks, killed training."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from plate_ocr.data import records
from plate_ocr.serving import evaluate
from plate_ocr.training import train

from conftest import PROJECT_DIR
from test_train import STRATEGY, smoke_config

TRAIN = os.path.join(PROJECT_DIR, "bin", "train")
SMOKE = os.path.join(PROJECT_DIR, "configs", "smoke.cfg")


def _copy_with_flipped_byte(tiny_records, tmp_path, split="val"):
    """A copy of the records with one byte of an image changed: CRCs of tf.data pass it."""
    records_dir = tmp_path / "records"
    shutil.copytree(tiny_records, records_dir)
    shard = sorted(records_dir.glob(f"plates-{split}.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return str(records_dir), shard.name


def test_changed_shard_stops_training_before_it_starts(tiny_records, tmp_path):
    records_dir, name = _copy_with_flipped_byte(tiny_records, tmp_path)
    with pytest.raises(ValueError, match=f"{name} is corrupt.*--skip_corrupt"):
        train.train_and_evaluate(smoke_config(records_dir), str(tmp_path / "run"), STRATEGY)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_skip_corrupt_leaves_the_shard_out_and_counts_its_records(tiny_records, tmp_path):
    records_dir, name = _copy_with_flipped_byte(tiny_records, tmp_path)
    config = smoke_config(records_dir, epochs=1, skip_corrupt=True, export=True)
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    info = records.read_info(records_dir)
    shard = next(s for s in info["splits"]["val"]["shards"] if s["name"] == name)
    assert result["lost_records"] == {"train": 0, "val": shard["num_examples"], "test": 0}
    report, _ = evaluate.evaluate_split(evaluate.load_predictor(str(tmp_path / "run"))[0],
                                        records_dir, "val", skip_corrupt=True)
    assert report["plates"] == 40 - shard["num_examples"]
    assert report["lost_records"] == shard["num_examples"]
    with pytest.raises(ValueError, match="corrupt"):
        evaluate.evaluate_split(evaluate.load_predictor(str(tmp_path / "run"))[0], records_dir,
                                "val")


@pytest.mark.slow
def test_metadata_of_another_version_is_one_line(tiny_records, tmp_path):
    records_dir = tmp_path / "records"
    shutil.copytree(tiny_records, records_dir)
    info = json.loads((records_dir / records.INFO_NAME).read_text())
    (records_dir / records.INFO_NAME).write_text(json.dumps(dict(info, version=99)))
    result = subprocess.run([TRAIN, f"--flagfile={SMOKE}", f"--records_dir={records_dir}",
                             f"--model_dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300)
    errors = [l for l in result.stderr.splitlines() if l.startswith("train: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "version 99" in errors[0]


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tiny_records, tmp_path):
    args = [TRAIN, f"--flagfile={SMOKE}", f"--records_dir={tiny_records}", "--epochs=3",
            "--steps_per_epoch=6", "--learning_rate=3e-3", "--noexport"]
    # The uninterrupted run goes on beside the one that is killed and resumed: it shares
    # nothing with it but the records, and their TensorFlow starts overlap.
    # (Its stderr to a file: a pipe nobody reads while the other runs could fill and stall it.)
    whole_log = open(tmp_path / "whole.log", "w")
    whole = subprocess.Popen(args + [f"--model_dir={tmp_path / 'whole'}"],
                             stdout=subprocess.DEVNULL, stderr=whole_log)
    try:
        killed = subprocess.Popen(args + [f"--model_dir={tmp_path / 'killed'}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            # The checkpoint of step 6 named in the manager's state file (written last, and
            # atomically): what a rerun resumes from. Its index alone may come before.
            state = tmp_path / "killed" / "checkpoints" / "checkpoint"
            while not (state.exists() and '"ckpt-6"' in state.read_text()):
                assert killed.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
        assert not os.path.exists(tmp_path / "killed" / "final_metrics.json")
        resumed = subprocess.run(args + [f"--model_dir={tmp_path / 'killed'}"],
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stdout and "done: 3 epochs, 18 steps" in resumed.stdout
        assert "exported to" not in resumed.stdout  # --noexport
        whole.wait(timeout=300)
    finally:
        if whole.poll() is None:
            whole.kill()
            whole.wait()
        whole_log.close()
    assert whole.returncode == 0, (tmp_path / "whole.log").read_text()[-3000:]
    losses = [json.load(open(tmp_path / run / "final_metrics.json"))["val"]["loss"]
              for run in ("killed", "whole")]
    history = json.load(open(tmp_path / "killed" / "history.json"))
    assert [h["step"] for h in history] == [6, 12, 18]
    # Same seed, same data order, same RNG states: the runs differ only by the float
    # nondeterminism of multi-threaded CPU kernels (about 2% here after 18 steps).
    assert abs(losses[0] - losses[1]) < 0.1 * losses[1], losses


@contextlib.contextmanager
def small_disk(path, size="2m"):
    """A tmpfs of the given size mounted at path (root only)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                            "tmpfs", str(path)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)])


@pytest.mark.slow
def test_disk_full_while_writing_records(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        result = subprocess.run(
            [os.path.join(PROJECT_DIR, "bin", "make_records"), f"--output_dir={disk}",
             "--num_train=2000", "--num_val=100", "--num_test=100", "--num_heldout=0",
             "--shards=2", "--workers=1"], capture_output=True, text=True, timeout=300)
        errors = [l for l in result.stderr.splitlines() if l.startswith("make_records: error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
        assert "No space left on device" in errors[0]
        assert os.listdir(disk) == []  # no final shard, no temporary, no metadata


@pytest.mark.slow
def test_disk_full_while_writing_checkpoints(tiny_records, tmp_path):
    with small_disk(tmp_path / "disk", size="300k") as disk:
        result = subprocess.run([TRAIN, f"--flagfile={SMOKE}", f"--records_dir={tiny_records}",
                                 f"--model_dir={disk}/run"],
                                capture_output=True, text=True, timeout=300)
        errors = [l for l in result.stderr.splitlines() if l.startswith("train: error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
        assert "space" in errors[0]
