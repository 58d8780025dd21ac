"""bin/data_service and bin/train --data_service: real servers and trainers on loopback ports.

Every server is a `bin/data_service` process, as a user starts it; a test waits for its
"serving" line before using it. The faults (a worker killed, the dispatcher restarted) get
their own service, so that no test inherits a broken one.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import PROJECT_DIR
from test_train_cli import _free_ports, error_lines, run_multi_worker

DATA_SERVICE = os.path.join(PROJECT_DIR, "bin", "data_service")
TRAIN = os.path.join(PROJECT_DIR, "bin", "train")
SMOKE = os.path.join(PROJECT_DIR, "configs", "smoke.cfg")
READY_SECONDS = 90  # TensorFlow's import alone takes seconds on a loaded 2-core machine


class Server:
    """One bin/data_service process, its output in a log file."""

    def __init__(self, log_dir, role: str, port: int, *args: str):
        self.role, self.port, self.args = role, port, args
        self.log_path = os.path.join(log_dir, f"{role}-{port}-{time.monotonic_ns()}.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [DATA_SERVICE, f"--role={role}", f"--port={port}", *args],
                stdout=log, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while "data_service: " not in open(self.log_path).read():
            assert self.process.poll() is None, open(self.log_path).read()[-3000:]
            assert time.monotonic() < deadline, f"{self.role} on {self.port} never said so"
            time.sleep(0.2)
        assert self.process.poll() is None, open(self.log_path).read()[-3000:]

    def restart(self) -> "Server":
        """The same command again (after a kill): a new Server."""
        return Server(os.path.dirname(self.log_path), self.role, self.port, *self.args)

    def stop(self, grace: float = 30) -> None:
        self.terminate()
        self.wait(grace)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, grace: float) -> None:
        """Waits for it to exit after terminate(); kills it after `grace` seconds."""
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Service:
    """A dispatcher (journal in work_dir) and workers, all local."""

    def __init__(self, tmp_dir, num_workers: int = 2):
        self.work_dir = os.path.join(tmp_dir, "dispatcher")
        ports = _free_ports(1 + num_workers)
        self.address = f"grpc://localhost:{ports[0]}"
        self.dispatcher = Server(tmp_dir, "dispatcher", ports[0], f"--work_dir={self.work_dir}")
        # A 1 s heartbeat: a worker that comes back gets its tasks within a second.
        self.workers = [Server(tmp_dir, "worker", port, f"--dispatcher=localhost:{ports[0]}",
                               "--heartbeat_interval=1") for port in ports[1:]]
        for server in [self.dispatcher, *self.workers]:
            server.wait_ready()

    def registered_datasets(self) -> int:
        """Datasets the dispatcher has stored: each training pipeline registers its own."""
        return len(os.listdir(os.path.join(self.work_dir, "datasets")))

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the workers together, then to the dispatcher; each killed if it is not
        gone after `grace` seconds."""
        for group in (self.workers, [self.dispatcher]):
            for server in group:
                server.terminate()
            for server in group:
                server.wait(grace)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A dispatcher and two workers shared by the tests that do not break them."""
    running = Service(str(tmp_path_factory.mktemp("service")))
    yield running
    # A worker may still be rendering a chunk (1,024 augmented plates) of a job whose client
    # is gone; after SIGTERM it waits for it at most cli.service.STOP_GRACE_SECONDS, and
    # nothing is checked after the last test, so the servers get a few seconds, then SIGKILL.
    running.stop(grace=5)


def train_args(records_dir, model_dir, address, *args):
    return [TRAIN, f"--flagfile={SMOKE}", f"--records_dir={records_dir}",
            f"--model_dir={model_dir}", f"--data_service={address}", *args]


def latest_step(model_dir) -> int | None:
    """The step of the newest whole checkpoint (its index written), or None."""
    steps = [int(path.rsplit("-", 1)[1].split(".")[0])
             for path in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index"))]
    return max(steps, default=None)


def wait_for_checkpoint(process, model_dir, timeout=180) -> int:
    deadline = time.monotonic() + timeout
    while latest_step(model_dir) is None:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    return latest_step(model_dir)


@pytest.mark.slow
def test_bad_input_is_one_line(service):
    port = service.dispatcher.port
    cases = {(): "--role",
             ("--role=worker", "--port=1"): "--dispatcher",
             ("--role=dispatcher", "--port=1", "--work_dir=/tmp/x", "--dispatcher=a:1"):
                 "--dispatcher is a flag of --role=worker",
             ("--role=dispatcher", f"--port={port}", "--work_dir=/tmp/x"): "in use"}
    for args, expected in cases.items():
        result = subprocess.run([DATA_SERVICE, *args], capture_output=True, text=True,
                                timeout=120)
        lines = [line for line in result.stderr.splitlines()
                 if line.startswith("data_service: error:")]
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (
            args, result.stderr[-2000:])
    result = subprocess.run(train_args("tfrecords", "/tmp/unused", "http://localhost:1"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert "--data_service" in error_lines(result)[0]


def test_stall_guard_fires_only_while_armed_and_waiting():
    # Events, not durations: the watcher's looks are counted (through its lock), and each
    # "nothing happens" lasts three of them; the stall is timed from the stamp to the line.
    # The one duration, the 60 s sleep and the 300 s limit, only catches a guard that never
    # fires or hangs.
    script = textwrap.dedent('''
        import sys, threading, time
        from plate_ocr.training import data_service
        sys.argv[0] = "train"
        guard = data_service.StallGuard(0.5)

        class CountingLock:
            """The guard's lock, counting the watcher's looks."""
            def __init__(self):
                self.lock, self.looks = threading.Lock(), 0
            def __enter__(self):
                self.lock.acquire()
                self.looks += threading.current_thread().name == "stall-guard"
            def __exit__(self, *error):
                self.lock.release()

        guard._lock = CountingLock()

        def while_the_watcher_looks(times):
            start = guard._lock.looks
            while guard._lock.looks < start + times:
                time.sleep(0.01)

        class Stderr:
            """Says how long after the stamp the guard's line came."""
            def __init__(self, stream):
                self.stream = stream
            def write(self, text):
                if "error:" in text:
                    self.stream.write(f"waited {time.time() - stamp}\\n")
                return self.stream.write(text)
            def flush(self):
                self.stream.flush()

        with guard.armed("never printed"):  # armed, a step computing: nothing happens
            while_the_watcher_looks(3)
        guard.waiting_since.assign(time.time() - 100)  # a wait that began long ago...
        while_the_watcher_looks(3)  # ...but not armed (evaluation, checkpoints): nothing
        guard.waiting_since.assign(0.0)
        print("alive", flush=True)
        sys.stderr = Stderr(sys.stderr)
        with guard.armed("stalled"):
            stamp = time.time()
            guard.waiting_since.assign(stamp)
            time.sleep(60)
        print("not reached", flush=True)
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=PROJECT_DIR)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stdout == "alive\n"
    assert [line for line in result.stderr.splitlines() if line.startswith("train:")] == [
        "train: error: stalled"]
    # Not before its timeout (however slow the machine, never sooner).
    waited, = [float(line.split()[1]) for line in result.stderr.splitlines()
               if line.startswith("waited ")]
    assert waited > 0.5


@pytest.mark.slow
def test_smoke_training_reads_through_the_service(service, tiny_records, tmp_path):
    before = service.registered_datasets()
    # Two replicas share the one input pipeline; the guard stamps every batch, and never fires.
    result = subprocess.run(train_args(tiny_records, tmp_path / "run", service.address,
                                       "--strategy=mirrored", "--num_cpu_devices=2",
                                       "--data_timeout=60", "--noexport"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stdout
    assert "done: 2 epochs, 8 steps" in result.stdout
    # One pipeline, a fresh iterator per epoch: two datasets went to the dispatcher.
    assert service.registered_datasets() - before == 2
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert [entry["step"] for entry in history] == [4, 8]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]


@pytest.mark.slow
def test_a_pass_through_the_service_delivers_each_training_record_once(
        service, tiny_records, read_examples):
    import tensorflow as tf
    from plate_ocr.data import records
    from plate_ocr.training import input_pipeline
    info = records.read_info(tiny_records)
    files = records.split_files(info, tiny_records, "train")
    labels = [tuple(example["label"]) for example in read_examples(files)]
    assert len(set(labels)) == len(labels) == 200  # every training label is distinct
    batch = 16  # 200 is not a multiple: batches run across the end of a pass
    dataset = input_pipeline.make_service_dataset(files, batch, info["image_height"],
                                                  info["image_width"], info["plate_length"],
                                                  service.address, shuffle_buffer=64, seed=1)
    assert dataset.element_spec[0].shape == (batch, 64, 128)
    delivered = []
    for images, batch_labels, weights in dataset.take(-(-3 * 200 // batch)):
        assert float(tf.reduce_sum(weights)) == batch
        delivered += [tuple(label) for label in batch_labels.numpy().tolist()]
    # Each pass is its own job: every record exactly once, pass after pass.
    for start in (0, 200, 400):
        assert sorted(delivered[start:start + 200]) == sorted(labels)


@pytest.mark.slow
@pytest.mark.parametrize("augmented", [False, True])
def test_service_workers_render_the_plates_this_process_would(service, tiny_records, augmented):
    import hashlib
    import tensorflow as tf
    from plate_ocr.data import records, writer
    from plate_ocr.training import render_source
    info = records.read_info(tiny_records)
    path = render_source.atlas_path(info, tiny_records)
    augment = writer.style_from_info(info).augment if augmented else None
    dataset = render_source.make_render_dataset(path, 32, 64, 128, 5, seed=2, first_chunk=10,
                                                service=service.address, shuffle_buffer=64,
                                                augment=augment, alphabet=info["alphabet"])
    assert dataset.element_spec[0].shape == (32, 64, 128)
    streamed = {hashlib.sha256(image.tobytes()).hexdigest()
                for images, *_ in dataset.take(40) for image in images.numpy()}
    # The workers hand the chunks out from chunk 10, two at a time each. Rendered here in
    # order until every streamed plate is found (each chunk is 1,024 plates to render).
    local = set()
    for chunk in range(10, 18):
        plates = render_source.chunk_plates(path, 2, tf.constant(chunk, tf.int64), 64, 128,
                                            augment, alphabet=info["alphabet"])
        for images, *_ in plates.batch(render_source.CHUNK):
            local |= {hashlib.sha256(image.tobytes()).hexdigest() for image in images.numpy()}
        if streamed <= local:
            break
    assert len(streamed) == 40 * 32 and streamed <= local


@pytest.mark.slow
def test_smoke_training_on_plates_rendered_by_the_service(service, tiny_records, tmp_path):
    result = subprocess.run(train_args(tiny_records, tmp_path / "run", service.address,
                                       "--source=render", "--data_timeout=60",
                                       "--noexport"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 2 epochs, 8 steps" in result.stdout
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]


@pytest.mark.slow
def test_multi_worker_mirrored_trainers_read_from_the_service(service, tiny_records, tmp_path):
    before = service.registered_datasets()
    outputs = run_multi_worker(train_args(tiny_records, tmp_path / "run", service.address,
                                          "--strategy=multi_worker_mirrored",
                                          "--data_timeout=60"))
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0][0]
    assert "done: 2 epochs, 8 steps" in outputs[0][0]
    # Two input pipelines (one per trainer), each with its own dataset every epoch.
    assert service.registered_datasets() - before == 4
    assert (tmp_path / "run" / "export" / "saved_model.pb").exists()


@pytest.mark.slow
def test_killed_worker_stops_training_in_one_line_and_a_rerun_resumes(tiny_records, tmp_path):
    running = Service(str(tmp_path))
    try:
        model_dir = tmp_path / "run"
        # An epoch of 320 plates is more than a pass (200), so every epoch waits for the end
        # of a pass, which a dead worker's task never reaches. The guard times only a step's
        # wait for its batch (not TensorFlow's start or tracing), and the servers are up
        # before training starts: a healthy service hands each batch over within a worker
        # heartbeat (1 s) or two, so 20 s is not reached before the kill, and the stall it
        # reports is the kill's (the run is asserted alive when the worker is killed).
        timeout = 20
        args = train_args(tiny_records, model_dir, running.address, "--epochs=5",
                          "--steps_per_epoch=10", "--noexport", f"--data_timeout={timeout}")
        training = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        wait_for_checkpoint(training, model_dir)
        assert training.poll() is None  # training, not stopped, when the worker is killed
        running.workers[1].process.kill()
        stdout, stderr = training.communicate(timeout=timeout + 300)
        assert training.returncode == 1, stderr[-3000:]
        step = latest_step(model_dir)
        lines = [line for line in stderr.splitlines() if line.startswith("train: error:")]
        assert lines == [
            f"train: error: no training batch for {timeout} s from the data service "
            f"{running.address}: are its workers up? the last checkpoint (step {step}) is "
            "kept; re-run to resume"]
        assert step < 50 and not (model_dir / "final_metrics.json").exists()

        running.workers[1] = running.workers[1].restart()  # the worker is back, same address
        # The rerun starts beside it (as a cluster restarts both): the two TensorFlow starts
        # overlap, and the rerun's client waits for the worker at its address.
        resumed = subprocess.Popen(args[:-1] + ["--data_timeout=120"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            running.workers[1].wait_ready()
            stdout, stderr = resumed.communicate(timeout=300)
        finally:
            if resumed.poll() is None:
                resumed.kill()
                resumed.wait()
        assert resumed.returncode == 0, stderr[-3000:]
        assert f"resumed from {model_dir / 'checkpoints'}/ckpt-{step} " in stdout
        assert "done: 5 epochs, 50 steps" in stdout
    finally:
        running.stop()


@pytest.mark.slow
def test_restarted_dispatcher_lets_training_go_on(tiny_records, tmp_path):
    running = Service(str(tmp_path), num_workers=1)  # the dispatcher is what is restarted
    try:
        model_dir = tmp_path / "run"
        training = subprocess.Popen(
            train_args(tiny_records, model_dir, running.address, "--epochs=5",
                       "--steps_per_epoch=10", "--data_timeout=120", "--noexport"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        step_at_crash = wait_for_checkpoint(training, model_dir)
        running.dispatcher.process.kill()
        running.dispatcher.process.wait()
        # Every epoch starts a job, which needs the dispatcher: training waits for it.
        running.dispatcher = running.dispatcher.restart()
        running.dispatcher.wait_ready()
        assert training.poll() is None  # it cannot finish without the dispatcher
        stdout, stderr = training.communicate(timeout=300)
        assert training.returncode == 0, stderr[-3000:]
        assert "done: 5 epochs, 50 steps" in stdout
        history = json.load(open(model_dir / "history.json"))
        assert [entry["step"] for entry in history] == list(range(10, 51, 10))
        assert step_at_crash < 50 and "resumed from" not in stdout
    finally:
        running.stop()


class _StuckServer:
    """A server whose stop() blocks until released, as a worker's does mid-chunk."""

    def __init__(self, stops: bool):
        self.release = threading.Event()
        if stops:
            self.release.set()
        self.stopped = threading.Event()

    def stop(self):
        self.release.wait()
        self.stopped.set()


def test_a_stop_that_hangs_ends_the_process_after_the_grace(capsys):
    from plate_ocr.cli import service as cli_service
    exits = []
    stuck = _StuckServer(stops=False)
    cli_service.stop_server(stuck, grace=0.05, exit_now=exits.append)
    assert exits == [0] and not stuck.stopped.is_set()
    assert "stopped without waiting for the work in progress" in capsys.readouterr().out
    stuck.release.set()  # the daemon thread ends
    prompt = _StuckServer(stops=True)
    cli_service.stop_server(prompt, grace=60, exit_now=exits.append)
    assert prompt.stopped.is_set() and exits == [0]  # stopped in time: no exit
