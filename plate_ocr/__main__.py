"""`python -m plate_ocr <command> [flags]`: what the bin/ launchers and `plate-ocr` run."""

import sys

from plate_ocr.cli import benchmark, data, import_images, service, train, use

COMMANDS = {**data.COMMANDS, **benchmark.COMMANDS, **import_images.COMMANDS, **train.COMMANDS,
            **use.COMMANDS, **service.COMMANDS}


def main() -> None:
    """Dispatches to the command named by the first argument."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: plate-ocr {{{','.join(COMMANDS)}}} [flags]", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    sys.argv[0] = command
    COMMANDS[command]()


if __name__ == "__main__":
    main()
