"""bin/benchmark on a tiny size: every figure is produced and positive (no timing asserts)."""

import json
import os
import re
import subprocess

import pytest

from conftest import ALPHABET, PROJECT_DIR
from plate_ocr.benchmark import figures as benchmark_lib

BENCHMARK = os.path.join(PROJECT_DIR, "bin", "benchmark")
SMOKE_CONFIG = os.path.join(PROJECT_DIR, "configs", "smoke.cfg")


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> str:
    """A model dir with an exported SavedModel and TFLite model of the smoke config's CRNN,
    untrained."""
    from plate_ocr.cli import train as cli_train
    from plate_ocr.serving import export
    from plate_ocr.training import model, plate_format
    config = cli_train.config_from(SMOKE_CONFIG).model
    model_dir = str(tmp_path_factory.mktemp("untrained"))
    crnn = model.build_crnn(config, 64, 128, len(ALPHABET) + 1)
    five = plate_format.exactly(5, len(ALPHABET))
    export.export_model(crnn, config, model_dir, ALPHABET, five, 64, 128)
    export.export_tflite(crnn, config, five, os.path.join(model_dir, export.TFLITE_MODEL))
    with open(os.path.join(model_dir, export.CONFIG_FILE), "w") as f:
        json.dump({"alphabet": ALPHABET}, f)  # what a .tflite file's reader looks for beside it
    return model_dir


@pytest.mark.slow
def test_records_stage_reports_every_figure(tmp_path, font_dir):
    result = subprocess.run(
        [BENCHMARK, "--stages=records", "--num_plates", "100", "--dataset_scale", "0.003",
         "--repeats", "1", "--work_dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    figures = output["records"]
    assert sorted(figures) == sorted(benchmark_lib.FIGURES["records"])
    assert {key: value for key, value in figures.items() if not value > 0} == {}
    assert figures["dataset_plates"] == sum(round(n * 0.003) for n in
                                            benchmark_lib.DEFAULT_DATASET.values())
    assert output["settings"]["records"]["plates_per_worker"] == 100
    assert os.listdir(tmp_path) == []  # the timed runs' files are removed

    table = benchmark_lib.format_table({"records": figures}).splitlines()
    assert len(table) == 1 + len(figures)
    for line, figure in zip(table[1:], benchmark_lib.FIGURES["records"].values()):
        assert line.startswith("records  " + figure.label)
        assert (" met" in line or " MISSED" in line) == (figure.target is not None)


def fake_tesseract(folder, readings: list[str]) -> str:
    """A `tesseract` in `folder` that reads the plates of its list as `readings` (one page
    per plate, spaced out and ended by a form feed, as Tesseract prints them): the folder."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "readings.txt"), "w") as f:
        f.write("\n".join(f"{text[:2]} {text[2:]}" for text in readings) + "\n")
    script = os.path.join(folder, "tesseract")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\n[ \"$OMP_THREAD_LIMIT\" = 1 ] || exit 3\n"
                f"head -n \"$(wc -l < \"$1\")\" {folder}/readings.txt | "
                "while read -r line; do printf '%s\\n\\f' \"$line\"; done\n")
    os.chmod(script, 0o755)
    return str(folder)


@pytest.mark.slow
def test_tensorflow_stages_report_every_figure(tmp_path, tiny_records, untrained_model):
    from plate_ocr.serving import evaluate
    work_dir = tmp_path / "work"
    tflite = os.path.join(untrained_model, "model.tflite")  # side by side with its SavedModel
    truths = next(evaluate.read_split(tiny_records, "val", 20))["text"]
    # Tesseract beside the models: one that reads every plate right, on one thread.
    path = fake_tesseract(tmp_path / "bin", truths) + os.pathsep + os.environ["PATH"]
    result = subprocess.run(
        [BENCHMARK, "--stages=pipeline,train,inference", "--records_dir", tiny_records,
         "--configs", SMOKE_CONFIG, "--model", f"{untrained_model},{tflite}",
         "--pipeline_examples", "256",
         "--png_examples", "30", "--train_steps", "2", "--inference_batches", "1",
         "--latency_calls", "3", "--tesseract_plates", str(len(truths)), "--repeats", "1",
         "--work_dir", str(work_dir), "--json"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, PATH=path))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    settings = output.pop("settings")
    expected = {"pipeline": "pipeline", "train smoke": "train",
                f"inference {os.path.basename(untrained_model)}": "inference",
                "inference model.tflite": "inference", "tesseract": "tesseract"}
    assert sorted(output) == sorted(expected)
    for stage, kind in expected.items():
        # The tiny records have no foreign split to read.
        assert (sorted(output[stage])
                == sorted(set(benchmark_lib.FIGURES[kind]) - {"foreign_plate_accuracy"})), stage
        assert {key: value for key, value in output[stage].items()
                if not value > 0 and key != "val_plate_accuracy"} == {}  # an untrained model
        assert kind == "tesseract" or settings[stage]["rss_mb_after_import"] > 0
    assert output["tesseract"]["val_plate_accuracy"] == 1.0  # each page read as its plate
    assert os.listdir(work_dir) == []  # the PNG folder is removed

    table = benchmark_lib.format_table(output).splitlines()
    assert len(table) == 1 + sum(len(figures) for figures in output.values())
    assert any(re.match(r"train smoke +custom loop / model\.fit", line) for line in table)
    assert sum(bool(re.match(r"inference \S+ +1 plate per call, 1 thread: median", line))
               for line in table) == 2  # the two models side by side


def test_tesseract_is_skipped_when_it_is_not_installed(monkeypatch, tmp_path):
    from plate_ocr.benchmark import model_stages
    monkeypatch.setattr(model_stages.shutil, "which", lambda name: None)
    assert model_stages.tesseract_stage(str(tmp_path), 10, 1, str(tmp_path)) is None


def test_missing_records_dir_fails_before_measuring(tmp_path):
    result = subprocess.run([BENCHMARK, "--stages=pipeline", "--records_dir",
                             str(tmp_path / "nothing")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("benchmark: error: no dataset_info.json in")


def test_unknown_stage_is_a_one_line_error():
    result = subprocess.run([BENCHMARK, "--stages=records,nonsense"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("benchmark: error: --stages must name some of records")
    assert line.endswith("(unknown: nonsense)")


@pytest.mark.parametrize("models, message", [
    ("{dir}/nothing.tflite", "--model: no such file or folder {dir}/nothing.tflite"),
    ("{dir}/a/fast,{dir}/b/fast", "--model must have distinct names, got fast, fast")])
def test_bad_models_are_a_one_line_error_before_measuring(tmp_path, tiny_records, models,
                                                          message):
    for folder in ("a/fast", "b/fast"):
        (tmp_path / folder).mkdir(parents=True)
    result = subprocess.run([BENCHMARK, "--stages=inference", "--records_dir", tiny_records,
                             "--model", models.format(dir=tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"benchmark: error: {message.format(dir=tmp_path)}"]


@pytest.mark.slow
def test_time_to_accuracy_trains_from_scratch_and_draws_the_curve(tmp_path, tiny_records):
    result = subprocess.run(
        [BENCHMARK, "--time_to_accuracy", "--tta_config", SMOKE_CONFIG, "--records_dir",
         tiny_records, "--work_dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    figures = output["time_to_accuracy"]
    # Every figure, but the drawn splits' accuracies where the records have no such split.
    known = set(benchmark_lib.FIGURES["time_to_accuracy"])
    assert set(figures) <= known
    assert known - set(figures) <= {"foreign_plate_accuracy", "captcha_plate_accuracy"}
    # Two epochs of a tiny model reach no target: "not reached" is infinity, not a number.
    assert figures["minutes_to_99.5"] == figures["minutes_to_99.9_val"] == float("inf")
    assert 0 < figures["train_minutes"] < figures["wall_minutes"]
    assert figures["examples_per_s"] > 0 and 0 <= figures["test_plate_accuracy"] <= 1
    curve = output["settings"]["time_to_accuracy"]["curve"]
    assert curve == str(tmp_path / "time_to_accuracy-smoke.png")
    with open(curve, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    table = benchmark_lib.format_table({"time_to_accuracy": figures})
    assert "not reached" in table and "MISSED" in table
