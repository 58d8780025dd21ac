"""Reading image files: any size, colour or format; bad files reported, good ones read."""

import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from plate_ocr.data import predict

from conftest import PROJECT_DIR


def _square_extent(fitted: np.ndarray) -> tuple[int, int]:
    """Height and width of the dark square in a fitted grey image."""
    rows, cols = np.nonzero(fitted < 100)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_fit_image_keeps_aspect_and_pads_with_the_background():
    flat = Image.fromarray(np.full((50, 400), 200, np.uint8))
    fitted = predict.fit_image(flat, 64, 128)
    assert fitted.shape == (64, 128) and fitted.dtype == np.uint8
    assert np.all(fitted == 200)  # scaled to 16x128, padded with its own grey
    colour = Image.new("RGB", (256, 128), (255, 0, 0))
    assert predict.fit_image(colour, 64, 128).shape == (64, 128)

    # A black square on grey, in an image wider than 2:1 and in one narrower: it stays a
    # square (stretching either to 64x128 would make it 2:1 or 1:4), and the band the image
    # does not fill is its grey.
    for (height, width), band in (((100, 400), (slice(0, 16), slice(48, 64))),
                                  ((200, 100), (slice(0, 48), slice(80, 128)))):
        picture = np.full((height, width), 200, np.uint8)
        top, left = height // 2 - 20, width // 2 - 20
        picture[top:top + 40, left:left + 40] = 0
        fitted = predict.fit_image(Image.fromarray(picture), 64, 128)
        assert fitted.shape == (64, 128)
        square_height, square_width = _square_extent(fitted)
        assert abs(square_height - square_width) <= 1, (height, width)
        assert 12 <= square_height <= 14  # 40 pixels at the scale of 0.32 both ways
        if height < width:  # scaled to 128x32: grey bands of 16 rows above and below
            assert np.all(fitted[band[0]] == 200) and np.all(fitted[band[1]] == 200)
        else:  # scaled to 32x64: grey bands of 48 columns left and right
            assert np.all(fitted[:, band[0]] == 200) and np.all(fitted[:, band[1]] == 200)
    # The background is the picture's, not a fixed grey: a white square on a dark plate
    # is padded dark.
    dark = np.full((100, 400), 30, np.uint8)
    dark[30:70, 180:220] = 255
    fitted = predict.fit_image(Image.fromarray(dark), 64, 128)
    assert np.all(fitted[:16] == 30) and np.all(fitted[48:] == 30)
    rows, cols = np.nonzero(fitted > 150)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1


def test_labels_from_filenames_use_the_model_alphabet(tmp_path):
    from plate_ocr.serving import evaluate, export
    model_dir = tmp_path / "run"
    (model_dir / export.SAVED_MODEL).mkdir(parents=True)
    (model_dir / export.SAVED_MODEL / "saved_model.pb").write_bytes(b"")
    (model_dir / export.CONFIG_FILE).write_text('{"alphabet": "ABCDEFGHJK0123456789"}')
    # A model dir, its SavedModel and its .keras file all name the run's alphabet.
    for path in (model_dir, model_dir / export.SAVED_MODEL, model_dir / export.KERAS_MODEL):
        alphabet = evaluate.model_alphabet(str(path))
        assert alphabet == "ABCDEFGHJK0123456789", path
    assert predict.label_from_filename("0007_car-AB123.png", alphabet) == "AB123"
    assert predict.label_from_filename("0007_car-AB123.png") == "123"  # digits: the default
    assert evaluate.model_alphabet(str(tmp_path / "nowhere")) is None
    (model_dir / export.CONFIG_FILE).write_text("{not json")
    assert evaluate.model_alphabet(str(model_dir)) is None


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


def run_predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(PROJECT_DIR, "bin", "predict"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_cli_reads_png_jpeg_and_colour_and_reports_bad_files(reading_model, tiny_records,
                                                                     tmp_path):
    from plate_ocr.serving import evaluate
    batch = next(evaluate.read_split(tiny_records, "test", 3))
    images, texts = batch["image"], batch["text"]
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / f"{texts[0]}.png")
    Image.fromarray(images[1]).resize((256, 128)).save(folder / f"0001_{texts[1]}.jpg",
                                                       quality=95)
    Image.fromarray(images[2]).convert("RGB").resize((96, 48)).save(folder / f"{texts[2]}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    sheet = tmp_path / "sheet.png"
    # --min_confidence=0: every reading is printed, however unsure (these 64x128 plates of
    # many faces are not what the model learned to read).
    result = run_predict(f"--model={reading_model[0]}", folder, "--labels_from_filenames",
                         f"--contact_sheet={sheet}", "--min_confidence=0")
    assert result.returncode == 1  # one bad file
    errors = [line for line in result.stderr.splitlines() if line.startswith("predict: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert len(lines) == 3 and all(0 <= float(conf) <= 1 for _, _, conf in lines)
    assert all(len(text) == 5 and text.isdigit() for _, text, _ in lines)
    accuracy = result.stdout.splitlines()[-2]
    assert accuracy.startswith("accuracy: ") and "/3 accepted)" in accuracy
    assert "coverage 1.0000 (3/3, 0 unreadable)" in accuracy
    assert Image.open(sheet).size[0] > 0


@pytest.mark.slow
def test_predict_cli_prints_unreadable_under_the_min_confidence(reading_model, tmp_path):
    from plate_ocr.cli import use as cli_use
    from plate_ocr.serving import calibration, evaluate, export
    model_dir, records_dir = reading_model
    batch = next(evaluate.read_split(records_dir, "test", 4))
    folder = tmp_path / "images"
    folder.mkdir()
    for image, text in zip(batch["image"], batch["text"]):
        Image.fromarray(image).save(folder / f"{text}.png")
    for kind in calibration.NON_PLATES:  # no digits in the names: no label
        Image.fromarray(calibration.non_plates(kind, 1, 32, 64)[0]).save(folder / f"{kind}.png")
    # The default: the threshold stored in the export.
    result = run_predict(f"--model={model_dir}", folder, "--labels_from_filenames")
    assert result.returncode == 0, result.stderr[-2000:]
    readings = {os.path.basename(line.split("\t")[0]): line.split("\t")[1:]
                for line in result.stdout.splitlines() if "\t" in line}
    for kind in calibration.NON_PLATES:
        text, confidence = readings[f"{kind}.png"]
        assert text == cli_use.UNREADABLE and float(confidence) < export.MIN_CONFIDENCE
    right = [readings[f"{truth}.png"][0] == truth for truth in batch["text"]]
    assert sum(right) >= 3
    accuracy = result.stdout.splitlines()[-1]
    assert accuracy.startswith(f"accuracy: 1.0000 ({sum(right)}/{sum(right)} accepted)")
    # A threshold no reading reaches: every line unreadable, nothing accepted.
    result = run_predict(f"--model={model_dir}", folder, "--labels_from_filenames",
                         "--min_confidence=1")
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert len(lines) == 7 and all(text == cli_use.UNREADABLE for _, text, _ in lines)
    assert result.stdout.splitlines()[-1] == (
        "accuracy: - (0/0 accepted); coverage 0.0000 (0/4, 4 unreadable); "
        "errors among accepted 0")


def test_the_accuracy_line_counts_unreadable_as_rejected():
    from plate_ocr.cli import use as cli_use
    line = cli_use.accuracy_line([("12345", "12345"), ("12345", "12346"), ("unreadable", "1"),
                                  ("54321", "54321"), ("unreadable", "2")])
    assert line == ("accuracy: 0.6667 (2/3 accepted); coverage 0.6000 (3/5, 2 unreadable); "
                    "errors among accepted 1")
