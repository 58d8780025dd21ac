"""Reading image files: any size, colour or format; bad files reported, good ones read."""

import os
import subprocess

import numpy as np
from PIL import Image

from plate_ocr import predict

from conftest import PROJECT_DIR


def test_fit_image_keeps_aspect_and_pads_with_the_background():
    wide = Image.fromarray(np.full((50, 400), 200, np.uint8))
    fitted = predict.fit_image(wide, 64, 128)
    assert fitted.shape == (64, 128) and fitted.dtype == np.uint8
    assert np.all(fitted == 200)  # scaled to 16x128, padded with its own grey
    colour = Image.new("RGB", (256, 128), (255, 0, 0))
    assert predict.fit_image(colour, 64, 128).shape == (64, 128)


def test_label_from_filename():
    assert predict.label_from_filename("data/test/37463.png") == "37463"
    assert predict.label_from_filename("0007_37463.jpg") == "37463"
    assert predict.label_from_filename("plate.png") is None


def test_load_image_errors_are_one_line(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    for path in (tmp_path / "notes.png", tmp_path / "missing.png"):
        try:
            predict.load_image(str(path), 64, 128)
        except ValueError as error:
            assert "\n" not in str(error) and str(path) in str(error)
        else:
            raise AssertionError("no error")


def test_predict_cli_reads_png_jpeg_and_colour_and_reports_bad_files(tiny_records, tmp_path):
    from plate_ocr import evaluate
    batch = next(evaluate.read_split(tiny_records, "test", 3))
    images, texts = batch["image"], batch["text"]
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / f"{texts[0]}.png")
    Image.fromarray(images[1]).resize((256, 128)).save(folder / f"0001_{texts[1]}.jpg",
                                                       quality=95)
    Image.fromarray(images[2]).convert("RGB").resize((96, 48)).save(folder / f"{texts[2]}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    model_dir = tmp_path / "model"
    from plate_ocr import train
    from test_train import STRATEGY, smoke_config
    train.train_and_evaluate(smoke_config(tiny_records, epochs=1, steps_per_epoch=1),
                             str(model_dir), STRATEGY)
    sheet = tmp_path / "sheet.png"
    result = subprocess.run(
        [os.path.join(PROJECT_DIR, "bin", "predict"), f"--model={model_dir}", str(folder),
         "--labels_from_filenames", f"--contact_sheet={sheet}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # one bad file
    errors = [line for line in result.stderr.splitlines() if line.startswith("predict: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert len(lines) == 3 and all(0 <= float(conf) <= 1 for _, _, conf in lines)
    assert result.stdout.splitlines()[-2].startswith("accuracy: ")
    assert "(" in result.stdout.splitlines()[-2] and "/3)" in result.stdout.splitlines()[-2]
    assert Image.open(sheet).size[0] > 0
