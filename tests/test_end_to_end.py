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


class Beside:
    """A command run in the background while the test goes on (as `run`, when finished):
    commands that only read the trained model need not wait for each other."""

    def __init__(self, log_dir, command, *args):
        self.command, self.log = command, os.path.join(log_dir, f"{command}.log")
        # Output to files: a pipe nobody reads meanwhile could fill and stall the command.
        with open(self.log + ".out", "w") as out, open(self.log + ".err", "w") as err:
            self.process = subprocess.Popen([os.path.join(PROJECT_DIR, "bin", command), *args],
                                            stdout=out, stderr=err)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        if self.process.poll() is None:  # the test failed first
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        """Its stdout, once it has exited 0."""
        self.process.wait(timeout=600)
        assert self.process.returncode == 0, (
            f"{self.command}: {open(self.log + '.err').read()[-3000:]}")
        return open(self.log + ".out").read()


def test_make_records_to_predict(tmp_path):
    records, model, images = tmp_path / "records", tmp_path / "model", tmp_path / "images"
    run("make_records", f"--output_dir={records}", "--num_train=400", "--num_val=64",
        "--num_test=64", "--num_heldout=32", "--shards=4", "--workers=2")
    out = run("train", f"--flagfile={PROJECT_DIR}/configs/smoke.cfg", f"--records_dir={records}",
              f"--model_dir={model}", "--steps_per_epoch=6")
    assert "done: 2 epochs, 12 steps" in out
    with Beside(tmp_path, "evaluate", f"--model={model}", "--split=heldout,test_aug") as evaluate:
        run("make_test_images", f"--records_dir={records}", f"--output_dir={images}",
            "--count=12")
        assert len(os.listdir(images)) == 12
        out = run("predict", f"--model={model}", str(images), "--labels_from_filenames",
                  f"--contact_sheet={tmp_path / 'sheet.png'}")
        # Readings under the export's min confidence count as unreadable, not as errors.
        assert "/12, " in out.splitlines()[-2] and (tmp_path / "sheet.png").exists()
        out = evaluate.output()
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


def test_another_alphabet_and_several_lengths_from_make_records_to_tflite(tmp_path):
    """The README's promises: nothing downstream assumes 10 digits or 5 characters, and
    make_records --plate_lengths gives every split, the rendered training stream, the model
    and its exports plates of each length."""
    import collections
    import numpy as np
    import tensorflow as tf
    from plate_ocr.data import predict as predict_lib, records as records_lib
    from plate_ocr.serving import evaluate, export
    from plate_ocr.training import render_source
    alphabet, lengths = "ABCDEFGHJK0123", {3, 4, 5}
    reads_alike = lambda text: len(text) in lengths and set(text) <= set(alphabet)
    records, model, images = tmp_path / "records", tmp_path / "model", tmp_path / "images"
    # Other programs drawing letters is part of the path: the foreign and captcha splits too.
    run("make_records", f"--output_dir={records}", f"--alphabet={alphabet}",
        "--plate_lengths=3,5,4", "--num_train=600", "--num_val=60", "--num_test=60",
        "--num_heldout=30", "--num_foreign=60", "--num_captcha=60", "--shards=2",
        "--workers=2")
    info = records_lib.read_info(str(records))
    assert (info["alphabet"], info["plate_length"], info["plate_lengths"]) == (
        alphabet, 5, [3, 4, 5])
    for split in ("train", "test", "heldout", "test_aug", "foreign", "captcha"):
        texts = [t for batch in evaluate.read_split(str(records), split) for t in batch["text"]]
        counts = collections.Counter(map(len, texts))
        assert set(counts) == lengths and min(counts.values()) >= len(texts) // 5, split
        assert all(reads_alike(text) for text in texts), split
    # The TF renderer's stream: labels ended by PAD, each length in it.
    _, labels, _, _ = next(iter(render_source.make_render_dataset(
        render_source.atlas_path(info, str(records)), 256, 64, 128, 5, seed=0, first_chunk=0,
        shuffle_buffer=256)))
    characters = labels.numpy() != records_lib.PAD
    assert set(characters.sum(axis=1)) == lengths
    assert (np.diff(characters.astype(int), axis=1) <= 0).all()  # PAD only at the end
    out = run("train", f"--flagfile={PROJECT_DIR}/configs/smoke.cfg", f"--records_dir={records}",
              f"--model_dir={model}", "--source=render", "--render_augment",
              "--input_norm=standardize", "--align_steps=4", "--steps_per_epoch=6")
    assert "done: 2 epochs, 12 steps" in out
    config = json.load(open(model / "config.json"))
    assert (config["alphabet"], config["plate_lengths"]) == (alphabet, [3, 4, 5])
    # evaluate and export only read the trained model: they run beside the rest.
    with Beside(tmp_path, "evaluate", f"--model={model}", "--split=test,foreign,captcha",
                "--non_plates=0") as evaluate_run, \
            Beside(tmp_path, "export", f"--model_dir={model}",
                   "--format=tflite_dynamic") as exporting:
        run("make_test_images", f"--records_dir={records}", f"--output_dir={images}",
            "--count=8")
        names = sorted(os.listdir(images))
        assert len(names) == 8 and all(
            name.endswith(".png") and reads_alike(name[:-4]) for name in names), names
        assert any(char.isalpha() for name in names for char in name[:-4]), "no letter was drawn"
        batch = np.stack([predict_lib.load_image(str(images / name), 64, 128)
                          for name in names])

        serve = tf.saved_model.load(str(model / "export")).signatures["serving_default"]
        texts = [t.decode() for t in serve(images=tf.constant(batch, tf.uint8))["text"].numpy()]
        assert len(texts) == 8 and all(reads_alike(text) for text in texts), texts

        out = run("predict", f"--model={model}", "--labels_from_filenames",
                  *[str(images / name) for name in names]).splitlines()
        readings = [line.split("\t")[1] for line in out[:-1]]
        assert len(readings) == 8 and all(
            reading == "unreadable" or reads_alike(reading) for reading in readings), out
        assert out[-1].startswith("accuracy: ") and "/8, " in out[-1], out[-1]

        out = evaluate_run.output()
        assert all(f"split {split}: 60 plates" in out for split in ("test", "foreign", "captcha"))
        out = exporting.output()
    path = model / export.TFLITE_FILES["tflite_dynamic"]
    assert f"wrote {path}" in out
    texts, confidences = export.load_tflite(str(path), alphabet, threads=1)(batch)
    assert len(texts) == 8 and all(reads_alike(text) for text in texts), texts
    assert np.all((0 <= confidences) & (confidences <= 1))
    plates = next(evaluate.read_split(str(records), "test", 60))["image"]
    saved = evaluate.load_predictor(str(model))[0](plates)[0]
    lite = evaluate.load_predictor(str(path))[0](plates)[0]
    assert all(reads_alike(text) for text in saved + lite), (saved, lite)
