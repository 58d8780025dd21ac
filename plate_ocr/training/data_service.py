"""tf.data service servers (dispatcher, worker) and the stall guard of training on them.

Library code: plain arguments, no flags (the data_service command in cli/service.py and the
train command read those). The training pipeline that runs on the service is
input_pipeline.make_service_dataset.
"""

import contextlib
import os
import sys
import threading
import time

import tensorflow as tf

PROTOCOL = "grpc"


def parse_address(address: str) -> str:
    """HOST:PORT of a service address, with or without the grpc:// prefix.

    Args:
      address: HOST:PORT or grpc://HOST:PORT.
    Returns:
      HOST:PORT.
    Raises:
      ValueError: not HOST:PORT, another protocol, or a port outside 1-65535.
    """
    rest = address
    if "://" in address:
        protocol, rest = address.split("://", 1)
        if protocol != PROTOCOL:
            raise ValueError(f"{address!r}: the tf.data service speaks {PROTOCOL}://, "
                             f"not {protocol}://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in rest:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. grpc://localhost:5050)")
    return rest


def service_target(address: str) -> str:
    """The grpc://HOST:PORT that `distribute` takes.

    Args:
      address: HOST:PORT or grpc://HOST:PORT.
    Returns:
      grpc://HOST:PORT.
    Raises:
      ValueError: as parse_address.
    """
    return f"{PROTOCOL}://{parse_address(address)}"


def start_dispatcher(port: int, work_dir: str) -> tf.data.experimental.service.DispatchServer:
    """Starts a fault-tolerant dispatcher that journals its state in work_dir.

    Args:
      port: port to serve on.
      work_dir: the journal's folder (local or gs://): a dispatcher restarted with the same
        folder picks up its registered datasets, workers and jobs again.
    Returns:
      the running server.
    """
    tf.io.gfile.makedirs(work_dir)
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir, fault_tolerant_mode=True)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int, host: str = "localhost",
                 heartbeat_seconds: float = 5.0) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker that registers with the dispatcher and runs the pipelines it is given.

    Args:
      dispatcher: the dispatcher's HOST:PORT (grpc:// optional).
      port: port to serve on.
      host: the name or address trainers reach this worker at. The dispatcher hands it to
        them, and it never forgets a worker (TF 2.21): a worker that dies must come back at the
        same address, or jobs wait for it.
      heartbeat_seconds: how often the worker reports to the dispatcher. A worker that comes
        back after a crash learns its tasks at its next report (TF's default is 30 s).
    Returns:
      the running server.
    """
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=parse_address(dispatcher), worker_address=f"{host}:{port}",
        port=port, protocol=PROTOCOL,
        heartbeat_interval_ms=max(1, round(1000 * heartbeat_seconds)))
    return tf.data.experimental.service.WorkerServer(config)


class StallGuard:
    """Ends the process when training has waited on its input for longer than a timeout.

    When a data-service worker dies, the client retries it forever inside IteratorGetNext, a C++
    call that Python cannot interrupt (seen for minutes with TF 2.21). So the training loop
    stamps a variable when it starts waiting for a batch (next_batch) and clears it when the
    batch is there; a thread watches the stamp while the guard is armed, and on a stall prints
    one line and leaves with os._exit. It cannot fire during evaluation or while a checkpoint
    is written: the guard is armed around training steps only, and the stamp is set only while
    a step waits for its batch.
    """

    def __init__(self, timeout_seconds: float, exit_code: int = 1):
        """timeout_seconds: longest wait for one training batch; exit_code: on a stall."""
        self.timeout_seconds = timeout_seconds
        self.exit_code = exit_code
        # Seconds since the epoch (tf.timestamp) at which the loop began to wait, 0: not
        # waiting. A plain variable: create the guard outside a strategy's scope.
        with tf.device("CPU:0"):
            self.waiting_since = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._message = None
        self._lock = threading.Lock()
        self._thread = None

    def next_batch(self, iterator, strategy: tf.distribute.Strategy):
        """next(iterator) in a tf.function, stamped for the watcher.

        Args:
          iterator: the distributed training iterator.
          strategy: its strategy (to list each replica's tensors of the batch).
        Returns:
          the batch.
        """
        # Explicit control dependencies: automatic ones order ops per resource, and the
        # variable and the iterator are different resources.
        with tf.control_dependencies([self.waiting_since.assign(tf.timestamp())]):
            batch = next(iterator)
        arrived = [tensor for value in tf.nest.flatten(batch)
                   for tensor in strategy.experimental_local_results(value)]
        with tf.control_dependencies(arrived):
            self.waiting_since.assign(0.0)  # a stateful op: the tf.function runs it
        return batch

    @contextlib.contextmanager
    def armed(self, message: str):
        """Watches the training loop's waits inside the block.

        Args:
          message: the line to print on a stall (after "<command>: error: ").
        """
        with self._lock:
            self._message = message
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="stall-guard")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._message = None

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_seconds / 10)
        while True:
            time.sleep(poll)
            with self._lock:
                message = self._message
                since = float(self.waiting_since.numpy()) if message else 0.0
                if message and since and time.time() - since > self.timeout_seconds:
                    # Under the lock: disarming (before evaluation) waits for this line.
                    sys.stdout.flush()
                    program = os.path.basename(sys.argv[0])
                    # A newline first: a progress bar may be half drawn on stderr.
                    sys.stderr.write(f"\n{program}: error: {message}\n")
                    sys.stderr.flush()
                    os._exit(self.exit_code)
