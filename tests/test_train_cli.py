"""bin/train as a user runs it: flagfiles, one-line errors, and the distributed paths.

Each test starts real processes: MirroredStrategy needs logical CPUs set before TensorFlow
starts, and MultiWorkerMirroredStrategy needs two workers talking over loopback.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import PROJECT_DIR

TRAIN = os.path.join(PROJECT_DIR, "bin", "train")
SMOKE = os.path.join(PROJECT_DIR, "configs", "smoke.cfg")


def run_train(*args, env=None, timeout=300):
    return subprocess.run([TRAIN, f"--flagfile={SMOKE}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def error_lines(process):
    """stderr lines that are ours (TensorFlow may log its own before failing)."""
    return [line for line in process.stderr.splitlines() if line.startswith("train: error:")]


@pytest.mark.slow
def test_flagfile_run_saves_effective_flags_that_rerun_the_same_config(tiny_records, tmp_path):
    # The flags are written before the training starts (then config.json): the rerun starts
    # from them while the first run trains, and the two TensorFlow starts overlap.
    # (Output to files: a pipe nobody reads meanwhile could fill and stall the first run.)
    with open(tmp_path / "a.out", "w") as out, open(tmp_path / "a.err", "w") as err:
        first = subprocess.Popen([TRAIN, f"--flagfile={SMOKE}", f"--records_dir={tiny_records}",
                                  f"--model_dir={tmp_path / 'a'}", "--noexport"],
                                 stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 300  # only a hang
        while not (tmp_path / "a" / "config.json").exists():
            assert first.poll() is None, (tmp_path / "a.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.1)
        flagfile = tmp_path / "a" / "flags.cfg"
        assert "--conv_filters=8,16,16,16" in flagfile.read_text()
        assert "--noexport" in flagfile.read_text().splitlines()
        second = subprocess.run([TRAIN, f"--flagfile={flagfile}",
                                 f"--model_dir={tmp_path / 'b'}"],
                                capture_output=True, text=True, timeout=300)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, (tmp_path / "a.err").read_text()[-3000:]
    assert "done: 2 epochs, 8 steps" in (tmp_path / "a.out").read_text()
    # --noexport: the run ends without exports, and the rerun of its flags too.
    assert not any(os.path.exists(tmp_path / run / "export") for run in ("a", "b"))
    assert second.returncode == 0, second.stderr[-3000:]
    configs = [json.load(open(tmp_path / run / "config.json")) for run in ("a", "b")]
    assert configs[0] == configs[1]


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(PROJECT_DIR, "configs"))))
def test_every_config_parses_into_a_training_config(name, monkeypatch):
    from plate_ocr.cli import train as cli_train
    from plate_ocr.training import trainer
    monkeypatch.chdir(PROJECT_DIR)  # flagfiles name each other relative to the project
    config = cli_train.config_from(os.path.join("configs", name))
    assert isinstance(config, trainer.TrainConfig)
    assert config.render_augment <= (config.source == "render")
    # Rendered plates have no font size or spacing to weigh them by (Trainer refuses it).
    assert config.tight_plates.weight == 1 or config.source == "records"
    # The frame targets come from the plates' ink: rendered plates bring it, records are
    # their own (Trainer refuses augmented training records).
    assert config.render_clean_fraction <= float(config.render_augment)


def test_mix_records_reads_dirs_and_fractions_and_refuses_bad_ones():
    from plate_ocr.cli import train as cli_train
    from plate_ocr.cli.common import CommandError
    config = cli_train.config_from(SMOKE, "--mix_records=tfrecords:0.3,/data/gs:x/other:0.2")
    assert config.mix_records == (("tfrecords", 0.3), ("/data/gs:x/other", 0.2))
    for bad in ("tfrecords", "tfrecords:1.5", ":0.3", "a:0.6,b:0.4", "tfrecords:some"):
        with pytest.raises(CommandError, match="--mix_records"):
            cli_train.config_from(SMOKE, f"--mix_records={bad}")


@pytest.mark.slow
def test_missing_records_dir_is_one_line(tmp_path):
    result = run_train(f"--records_dir={tmp_path / 'none'}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "bin/make_records" in error_lines(result)[0]


@pytest.mark.slow
def test_bad_flag_is_one_line(tiny_records, tmp_path):
    result = run_train("--batch_size=zero", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and len(error_lines(result)) == 1
    result = run_train("--render_augment", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert "--render_augment needs --source=render" in error_lines(result)[0]
    # A plate format the records' alphabet cannot write: before any training.
    result = run_train(f"--records_dir={tiny_records}", "--plate_format=[0-9]{3}[A-Z]{2}",
                       f"--model_dir={tmp_path / 'format'}")
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert "[A-Z] has no character of the alphabet" in error_lines(result)[0]
    assert not os.path.exists(tmp_path / "format" / "checkpoints")


@pytest.mark.slow
def test_corrupt_shard_is_one_line_naming_the_file(tiny_records, tmp_path):
    records_dir = tmp_path / "records"
    shutil.copytree(tiny_records, records_dir)
    shard = sorted(records_dir.glob("plates-train.tfrecord-*"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    result = run_train(f"--records_dir={records_dir}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1 and shard.name in lines[0], result.stderr[-3000:]


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_records, tmp_path):
    # Adam inside a distributed tf.function broke on Keras 3.15 (issue 23085): keep this path.
    # Evaluation in batches of 8 per replica: the 40 val and test plates make 5 batches, so
    # the second replica's last batch is empty.
    result = run_train(f"--records_dir={tiny_records}", f"--model_dir={tmp_path / 'run'}",
                       "--strategy=mirrored", "--num_cpu_devices=2", "--profile_steps=2,4",
                       "--eval_batch_size=16", "--noexport",
                       "--max_minutes=60")  # a budget: the replicas agree on its plan
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stdout
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    # The profiler window works unchanged under the strategy.
    assert glob.glob(str(tmp_path / "run" / "plugins" / "profile" / "*" / "*.xplane.pb"))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_multi_worker(args: list[str], count: int = 2) -> list[tuple[str, str]]:
    """Runs `count` processes of args, each worker `index` of a loopback TF_CONFIG cluster.

    Returns:
      (stdout, stderr) of each, after asserting that each exited 0.
    """
    workers = [f"127.0.0.1:{port}" for port in _free_ports(count)]
    processes = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(os.environ, TF_CONFIG=json.dumps(
                                      {"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})))
                 for index in range(count)]
    outputs = [process.communicate(timeout=400) for process in processes]
    failed = [f"worker {index}: {stderr[-2000:]}"
              for index, (process, (_, stderr)) in enumerate(zip(processes, outputs))
              if process.returncode != 0]
    assert not failed, "\n".join(failed)  # every failing worker's log: the first may not say why
    return outputs


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_local_workers(tiny_records, tmp_path):
    outputs = run_multi_worker([TRAIN, f"--flagfile={SMOKE}", f"--records_dir={tiny_records}",
                                f"--model_dir={tmp_path / 'run'}",
                                "--strategy=multi_worker_mirrored", "--profile_steps=2,4",
                                # A budget: the workers agree on its plan (a collective).
                                "--max_minutes=60"])
    # MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy under its own name.
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0][0]
    assert (tmp_path / "run" / "export" / "saved_model.pb").exists()
    assert glob.glob(str(tmp_path / "run" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    # The second worker wrote only into its scratch dir, and removed it.
    assert not list((tmp_path / "run").glob(".worker-*"))
