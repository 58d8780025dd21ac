"""deploy/: every YAML file parses, and every flag passed to bin/train or bin/data_service is
one that command defines, with a value it accepts (flagfiles included)."""

import glob
import os
import re
import shlex

import pytest
import yaml
from absl import flags

from plate_ocr.cli import service as cli_service, train as cli_train

from conftest import PROJECT_DIR

DEPLOY = os.path.join(PROJECT_DIR, "deploy")
SHELLS = (["/bin/bash", "-c"], ["/bin/sh", "-c"], ["bash", "-c"], ["sh", "-c"])
DEFINE_FLAGS = {"train": cli_train.define_train_flags,
                "data_service": cli_service.define_service_flags}
# A command up to the end of its line (backslash continuations included), a quote (the end of
# an ssh --command="..."), or a shell operator.
COMMAND = re.compile(r"\bbin/(train|data_service)\b((?:\\\n|[^\n;&|\"'`])*)")


def deploy_files(*extensions: str) -> list[str]:
    return sorted(path for extension in extensions
                  for path in glob.glob(os.path.join(DEPLOY, f"*.{extension}")))


def containers(node):
    """Every container spec (a mapping with an image) anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        if "image" in node and ("command" in node or "args" in node):
            yield node
        for value in node.values():
            yield from containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers(value)


def shell_texts(path: str) -> list[str]:
    """The text in which a file runs commands: container commands for YAML, else the file."""
    text = open(path, encoding="utf-8").read()
    if not path.endswith(".yaml"):
        return [text]
    texts = []
    for document in yaml.safe_load_all(text):
        for container in containers(document):
            argv = [str(a) for a in container.get("command", []) + container.get("args", [])]
            texts.append(argv[2] if argv[:2] in SHELLS else " ".join(argv))
    return texts


def invocations(path: str) -> list[tuple[str, list[str]]]:
    """(command, its --flag arguments) for every bin/train and bin/data_service run in a file.

    A command named without flags (in prose) is not a run.
    """
    found = []
    for text in shell_texts(path):
        for match in COMMAND.finditer(text):
            arguments = shlex.split(match.group(2).replace("\\\n", " "))
            flag_arguments = [a for a in arguments if a.startswith("--")]
            if flag_arguments:
                found.append((match.group(1), flag_arguments))
    return found


def test_every_yaml_file_parses():
    paths = deploy_files("yaml", "yml")
    assert len(paths) >= 3
    for path in paths:
        documents = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
        assert documents, path
        for document in documents:
            assert {"apiVersion", "kind", "metadata"} <= set(document), path


def test_the_recipe_runs_the_service_and_the_trainers():
    def runs(name):
        return invocations(os.path.join(DEPLOY, name))
    assert sorted(argument for command, arguments in runs("data-service.yaml")
                  for argument in arguments if argument.startswith("--role=")
                  ) == ["--role=dispatcher", "--role=worker"]
    for name in ("train-job.yaml", "tpu_vm.sh"):
        (command, arguments), = runs(name)
        assert command == "train" and any(a.startswith("--data_service=") for a in arguments)


# The files that run neither command (storage.yaml: the volumes). Every other file must have
# its runs found, so that a file whose commands the extraction misses fails instead of passing
# with nothing checked.
NO_COMMAND = {"storage.yaml"}


def check_flags(path: str) -> int:
    """Asserts every flag of every run in `path` is its command's, with a value it accepts;
    returns the number of runs checked."""
    runs = invocations(path)
    for command, arguments in runs:
        values = flags.FlagValues()
        names = DEFINE_FLAGS[command](values)
        for argument in arguments:
            name = argument[2:].split("=", 1)[0]
            assert name in names or name == "flagfile", f"{path}: bin/{command} has no --{name}"
        # Parsing checks the values too (types, bounds, enums) and reads the flagfiles.
        values([command, *arguments])
    return len(runs)


@pytest.mark.parametrize("path", deploy_files("yaml", "yml", "sh", "md"),
                         ids=os.path.basename)
def test_every_flag_is_a_real_flag_of_its_command(path, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)  # --flagfile=configs/... is relative to the project
    checked = check_flags(path)
    if os.path.basename(path) in NO_COMMAND:
        assert checked == 0, f"{path} runs a command now: take it out of NO_COMMAND"
    else:
        assert checked > 0, f"{path}: no bin/train or bin/data_service run found"


def test_the_flag_check_finds_runs_and_fails_on_a_wrong_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)
    # A manifest with no command, and prose naming a command without flags: nothing to check.
    volumes = tmp_path / "volumes.yaml"
    volumes.write_text("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n")
    prose = tmp_path / "notes.md"
    prose.write_text("Run bin/train once the records are written.\n")
    assert check_flags(str(volumes)) == 0 and check_flags(str(prose)) == 0
    # A container's shell command is found and checked, a continuation line included ...
    job = tmp_path / "job.yaml"
    container = ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: t}\nspec:\n  containers:\n"
                 "  - image: plate-ocr\n    command: [/bin/sh, -c]\n    args:\n    - |\n"
                 "      bin/train --epochs=2 \\\n        %s && echo done\n")
    job.write_text(container % "--batch_size=64")
    assert invocations(str(job)) == [("train", ["--epochs=2", "--batch_size=64"])]
    assert check_flags(str(job)) == 1
    # ... and fails on a flag the command does not define, or a value it does not accept.
    job.write_text(container % "--no_such_flag=1")
    with pytest.raises(AssertionError, match="bin/train has no --no_such_flag"):
        check_flags(str(job))
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nbin/data_service --role=worker --port=many\n")
    with pytest.raises(flags.Error):
        check_flags(str(script))
