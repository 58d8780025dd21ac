"""bin/benchmark on a tiny size: every figure is produced and positive (no timing asserts)."""

import json
import os
import subprocess

from conftest import PROJECT_DIR
from plate_ocr import benchmark

BENCHMARK = os.path.join(PROJECT_DIR, "bin", "benchmark")


def test_records_stage_reports_every_figure(tmp_path, font_dir):
    result = subprocess.run(
        [BENCHMARK, "--stages=records", "--num_plates", "100", "--dataset_scale", "0.003",
         "--repeats", "1", "--work_dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    figures = output["records"]
    assert sorted(figures) == sorted(benchmark.FIGURES["records"])
    assert {key: value for key, value in figures.items() if not value > 0} == {}
    assert figures["dataset_plates"] == sum(round(n * 0.003) for n in
                                            benchmark.DEFAULT_DATASET.values())
    assert output["settings"]["records"]["plates_per_worker"] == 100
    assert os.listdir(tmp_path) == []  # the timed runs' files are removed

    table = benchmark.format_table({"records": figures}).splitlines()
    assert len(table) == 1 + len(figures)
    for line, figure in zip(table[1:], benchmark.FIGURES["records"].values()):
        assert line.startswith("records  " + figure.label)
        assert (" met" in line or " MISSED" in line) == (figure.target is not None)


def test_unknown_stage_is_a_one_line_error():
    result = subprocess.run([BENCHMARK, "--stages=records,nonsense"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("benchmark: error: --stages must name some of records")
    assert line.endswith("(unknown: nonsense)")
