"""The user's path, command by command: make_records -> train -> evaluate -> predict."""

import json
import os
import subprocess

import pytest

from conftest import PROJECT_DIR
from plate_ocr.serving.export import MIN_CONFIDENCE

pytestmark = pytest.mark.slow


def run(command, *args):
    result = subprocess.run([os.path.join(PROJECT_DIR, "bin", command), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result.stdout


def test_make_records_to_predict(tmp_path):
    records, model, images = tmp_path / "records", tmp_path / "model", tmp_path / "images"
    run("make_records", f"--output_dir={records}", "--num_train=400", "--num_val=64",
        "--num_test=64", "--num_heldout=32", "--shards=4", "--workers=2")
    out = run("train", f"--flagfile={PROJECT_DIR}/configs/smoke.cfg", f"--records_dir={records}",
              f"--model_dir={model}", "--steps_per_epoch=6")
    assert "done: 2 epochs, 12 steps" in out
    out = run("evaluate", f"--model={model}", "--split=heldout,test_aug")
    assert "split heldout: 32 plates" in out and "split test_aug: 64 plates" in out
    assert out.splitlines()[-3].split() == ["split", "plates", "plate", "acc", "char", "acc",
                                            "CER", "ECE", f"cov@{MIN_CONFIDENCE:g}",
                                            f"acc@{MIN_CONFIDENCE:g}"]
    metrics = json.load(open(model / "metrics-heldout.json"))
    assert metrics["plates"] == 32 and 0 <= metrics["plate_accuracy"] <= 1
    assert os.path.exists(metrics["pictures"]["confusion"])
    assert os.path.exists(metrics["pictures"]["reliability"])
    assert {t["threshold"] for t in metrics["calibration"]["thresholds"]} == {
        0.5, 0.8, 0.9, 0.95, 0.99}
    assert f"non-plates read at or above min confidence {MIN_CONFIDENCE:g}" in out
    run("make_test_images", f"--records_dir={records}", f"--output_dir={images}", "--count=12")
    assert len(os.listdir(images)) == 12
    out = run("predict", f"--model={model}", str(images), "--labels_from_filenames",
              f"--contact_sheet={tmp_path / 'sheet.png'}")
    # Readings under the export's min confidence count as unreadable, not as errors.
    assert "/12, " in out.splitlines()[-2] and (tmp_path / "sheet.png").exists()
