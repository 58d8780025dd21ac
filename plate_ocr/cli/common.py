"""What every command shares: FLAGS, one-line errors for bad input (run_command), project paths.

The cli/ modules are the only absl code. Each command defines its own flags when it starts, so
`--helpshort` lists only those. Bad input ends with one line on stderr, `<command>: error: ...`,
and exit status 2.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


class CommandError(Exception):
    """A user error to report in one line (exit status 2)."""


def plate_lengths(values: list[str], other: str = "") -> list[int]:
    """A --plate_lengths list as distinct numbers, shortest first.

    Raises:
      CommandError: one that is not a whole number of at least 1 (`other`: what else the
        flag accepts, for the message).
    """
    try:
        lengths = sorted({int(value) for value in values})
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise CommandError(f"--plate_lengths must be whole numbers of at least 1{other}: got "
                           f"{','.join(values)}")
    return lengths


def _fail(message: str) -> None:
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_command(main, takes_arguments: bool = False) -> None:
    """app.run with one-line errors for bad flags and for CommandError."""
    def parse(argv: list[str]) -> list[str]:
        try:
            rest = FLAGS(argv)
        except flags.Error as error:
            _fail(str(error).splitlines()[0])
        if len(rest) > 1 and not takes_arguments:
            _fail(f"unexpected arguments: {' '.join(rest[1:])}")
        return rest

    def guarded(argv):
        try:
            main(argv)
        except CommandError as error:
            _fail(str(error))
    app.run(guarded, flags_parser=parse)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logs from warnings up, in this process and those it spawns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
