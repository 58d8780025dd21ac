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


@pytest.mark.parametrize("path", deploy_files("yaml", "yml", "sh", "md"),
                         ids=os.path.basename)
def test_every_flag_is_a_real_flag_of_its_command(path, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)  # --flagfile=configs/... is relative to the project
    for command, arguments in invocations(path):
        values = flags.FlagValues()
        names = DEFINE_FLAGS[command](values)
        for argument in arguments:
            name = argument[2:].split("=", 1)[0]
            assert name in names or name == "flagfile", f"{path}: bin/{command} has no --{name}"
        # Parsing checks the values too (types, bounds, enums) and reads the flagfiles.
        values([command, *arguments])
