"""The data_service command: a tf.data service dispatcher or worker, until SIGTERM or SIGINT.

absl code like the rest of cli/ (helpers in common.py): flags are defined when the command starts.
  bin/data_service --role=dispatcher --port=5050 --work_dir=/var/lib/plate_ocr/dispatcher
  bin/data_service --role=worker --dispatcher=HOST:5050 --port=5051 --worker_host=HOST
"""

import os
import signal
import socket
import sys
import threading

from absl import flags

from plate_ocr.cli.common import FLAGS, CommandError, run_command

_ROLE_FLAGS = {"dispatcher": ("work_dir",),
               "worker": ("dispatcher", "worker_host", "heartbeat_interval")}
# Seconds a stop may take before the process ends without it: a worker's server.stop() waits
# for the element in progress, 17-30 s for a chunk of rendered plates, as long as Kubernetes'
# default grace period (30 s) before SIGKILL. A worker holds nothing that outlives it (the
# dispatcher hands its tasks to the others), and the dispatcher's state is in its journal.
STOP_GRACE_SECONDS = 5.0


def _check_port_free(port: int) -> None:
    # gRPC binds with SO_REUSEPORT, so a second server on a taken port would start and share
    # it silently; a bind without it tells. SO_REUSEADDR (as gRPC) lets a server that was just
    # killed come back on its port while old connections linger in TIME_WAIT.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise CommandError(f"--port={port}: {error.strerror or error}") from None


def _check_role_flags(role: str) -> None:
    for other, names in _ROLE_FLAGS.items():
        for name in names:
            if other != role and FLAGS[name].present:
                raise CommandError(f"--{name} is a flag of --role={other}, not --role={role}")
    required = {"dispatcher": "work_dir", "worker": "dispatcher"}[role]
    if not FLAGS[required].value:
        raise CommandError(f"--role={role} needs --{required}")


def _wait_for_signal() -> None:
    """Blocks until SIGTERM or SIGINT (what Kubernetes and Ctrl-C send)."""
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(1.0):  # a timeout, so that the handlers run promptly
        pass


def stop_server(server, grace: float = STOP_GRACE_SECONDS, exit_now=os._exit) -> None:
    """server.stop(), or, when that takes longer than `grace` seconds, exit_now(0) (the
    process ends without waiting, its output flushed)."""
    stopping = threading.Thread(target=server.stop, daemon=True)
    stopping.start()
    stopping.join(grace)
    if stopping.is_alive():
        print(f"data_service: stopped without waiting for the work in progress "
              f"(over {grace:g} s)", flush=True)
        sys.stderr.flush()
        exit_now(0)


def define_service_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines the data_service flags, on FLAGS or on a FlagValues of one's own.

    Returns:
      their names, in order.
    """
    before = set(flag_values)
    on = {"flag_values": flag_values}
    flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "What to serve: the dispatcher "
                      "(one per service) or a worker (as many as the input needs).", **on)
    flags.DEFINE_integer("port", None, "Port to serve on.", lower_bound=1, upper_bound=65535,
                         **on)
    flags.DEFINE_string("work_dir", "", "Dispatcher: folder (local or gs://) of its journal of "
                        "datasets, workers and jobs; a dispatcher restarted with the same folder "
                        "picks its jobs up again (fault-tolerant mode).", **on)
    flags.DEFINE_string("dispatcher", "", "Worker: the dispatcher's HOST:PORT (grpc:// "
                        "optional).", **on)
    flags.DEFINE_string("worker_host", "localhost", "Worker: the host name or address trainers "
                        "reach it at (in a cluster, the pod's stable DNS name). A worker that "
                        "dies must come back at the same address: the dispatcher keeps giving "
                        "it work.", **on)
    flags.DEFINE_float("heartbeat_interval", 5.0, "Worker: seconds between its reports to the "
                       "dispatcher; a worker that comes back after a crash gets its tasks at "
                       "its next report.", lower_bound=0.01, **on)
    flags.mark_flags_as_required(["role", "port"], flag_values=flag_values)
    return [name for name in flag_values if name not in before]


def data_service() -> None:
    """Runs a tf.data service dispatcher or worker until it is told to stop."""
    # Before TensorFlow loads: keep its warnings and errors, drop its info chatter.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    define_service_flags()

    def main(argv):
        _check_role_flags(FLAGS.role)
        _check_port_free(FLAGS.port)
        import tensorflow as tf  # after the checks: bad input is told without the wait
        from absl import logging
        from plate_ocr.training import data_service as service
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            if FLAGS.role == "dispatcher":
                server = service.start_dispatcher(FLAGS.port, FLAGS.work_dir)
                print(f"data_service: dispatcher serving grpc://{socket.gethostname()}:"
                      f"{FLAGS.port}, journal in {FLAGS.work_dir}", flush=True)
            else:
                server = service.start_worker(FLAGS.dispatcher, FLAGS.port, FLAGS.worker_host,
                                              FLAGS.heartbeat_interval)
                print(f"data_service: worker serving {FLAGS.worker_host}:{FLAGS.port} for the "
                      f"dispatcher {service.parse_address(FLAGS.dispatcher)}", flush=True)
        except ValueError as error:
            raise CommandError(str(error)) from None
        except tf.errors.OpError as error:
            raise CommandError(f"could not start the {FLAGS.role}: "
                               f"{error.message.splitlines()[0]}") from None
        _wait_for_signal()
        stop_server(server)

    run_command(main)


COMMANDS = {"data_service": data_service}
