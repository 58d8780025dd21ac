"""The exports' reading, its confidence and the readable output, in every format."""

import json
import os
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from plate_ocr.serving import calibration, evaluate, export
from plate_ocr.training import model, plate_format

from conftest import PROJECT_DIR
from test_train import smoke_config

FIVE = plate_format.exactly(5, 10)  # the readings of five digits


def read_with(serve, images: np.ndarray) -> dict:
    return {key: value.numpy() for key, value in serve(images=tf.constant(images)).items()}


@pytest.mark.slow
def test_the_threshold_keeps_what_the_model_reads_and_rejects_non_plates(reading_model):
    model_dir, records_dir = reading_model
    serve, min_confidence = export.load_export(f"{model_dir}/{export.SAVED_MODEL}")
    assert min_confidence == export.MIN_CONFIDENCE
    batch = next(evaluate.read_split(records_dir, "test", 200))
    outputs = read_with(serve, batch["image"])
    assert set(outputs) == {"text", "confidence", "readable"}
    assert outputs["readable"].dtype == bool and outputs["confidence"].dtype == np.float32
    np.testing.assert_array_equal(outputs["readable"], outputs["confidence"] >= min_confidence)
    right = np.array([text.decode() == truth for text, truth in zip(outputs["text"],
                                                                    batch["text"])])
    assert right.mean() >= 0.95, "the fixture's model has not learned to read"
    assert (right & outputs["readable"]).mean() >= 0.9  # right readings pass the threshold
    height, width = batch["image"].shape[1:]
    for kind in calibration.NON_PLATES:
        outputs = read_with(serve, calibration.non_plates(kind, 20, height, width))
        assert not outputs["readable"].any(), (kind, outputs["confidence"].max())
        assert len(outputs["text"][0]) == 5  # still 5 digits, for consumers that ignore it


@pytest.mark.slow
def test_saved_model_keras_and_tflite_agree_on_confidence_and_readable(reading_model):
    model_dir, records_dir = reading_model
    config = json.load(open(f"{model_dir}/{export.CONFIG_FILE}"))
    trained = keras.models.load_model(f"{model_dir}/{export.KERAS_MODEL}")
    tflite = export.export_tflite(trained, model.config_from_dict(config["model"]),
                                  FIVE, f"{model_dir}/{export.TFLITE_MODEL}")
    images = next(evaluate.read_split(records_dir, "test", 40))["image"]
    images = np.concatenate([images, calibration.non_plates("photo", 8, *images.shape[1:])])
    readings = {}
    for path in (model_dir, f"{model_dir}/{export.KERAS_MODEL}", tflite):
        predict, _ = evaluate.load_predictor(path)
        assert predict.min_confidence == export.MIN_CONFIDENCE
        readings[path] = predict(images)
    (saved_texts, saved), (keras_texts, keras_confidence), (_, tflite_confidence) = (
        readings.values())
    assert saved_texts == keras_texts
    np.testing.assert_allclose(keras_confidence, saved, atol=1e-4)
    np.testing.assert_allclose(tflite_confidence, saved, atol=1e-3)  # other kernels (XNNPACK)
    runner = tf.lite.Interpreter(model_path=tflite).get_signature_runner()
    outputs = runner(images=images)
    np.testing.assert_array_equal(outputs["readable"],
                                  outputs["confidence"] >= export.MIN_CONFIDENCE)


@pytest.mark.slow
def test_the_dynamic_range_tflite_reads_what_the_saved_model_reads(reading_model, tmp_path):
    model_dir, records_dir = reading_model
    result = subprocess.run([os.path.join(PROJECT_DIR, "bin", "export"), "--model_dir",
                             model_dir],  # the default format: tflite_dynamic
                            capture_output=True, text=True, timeout=300)
    dynamic = os.path.join(model_dir, export.TFLITE_FILES["tflite_dynamic"])
    assert result.returncode == 0 and result.stdout.strip() == f"wrote {dynamic}", result.stderr
    batch = next(evaluate.read_split(records_dir, "test", 200))
    saved = evaluate.load_predictor(model_dir)[0](batch["image"])[0]
    assert np.mean([a == b for a, b in zip(saved, evaluate.load_predictor(dynamic)[0](
        batch["image"])[0])]) >= 0.99
    # A batch read on two cores in chunks, the last one padded (load_tflite): what one plate
    # at a time reads.
    images = batch["image"][:2 * export.TFLITE_CHUNK + 3]
    chunked, confidences = export.load_tflite(dynamic, "0123456789", threads=2)(images)
    one = export.load_tflite(dynamic, "0123456789", threads=1)
    singles = [one(image[None]) for image in images]
    assert chunked == [texts[0] for texts, _ in singles]
    np.testing.assert_allclose(confidences, [c[0] for _, c in singles], atol=1e-5)
    # Its weights are int8 (a float model has none), so the file is smaller.
    config = json.load(open(f"{model_dir}/{export.CONFIG_FILE}"))
    trained = keras.models.load_model(f"{model_dir}/{export.KERAS_MODEL}")
    float_model = export.export_tflite(trained, model.config_from_dict(config["model"]), FIVE,
                                       str(tmp_path / "float.tflite"))

    def int8_tensors(path):
        return sum(tensor["dtype"] == np.int8
                   for tensor in tf.lite.Interpreter(model_path=path).get_tensor_details())
    assert int8_tensors(dynamic) > 0 and int8_tensors(float_model) == 0
    assert os.path.getsize(dynamic) < 0.6 * os.path.getsize(float_model)
    with pytest.raises(ValueError, match="no TFLite variant"):
        export.export_tflite(trained, model.config_from_dict(config["model"]), FIVE,
                             str(tmp_path / "x.tflite"), "tflite_int4")


@pytest.mark.slow
def test_a_plate_format_is_what_the_saved_model_and_tflite_read(reading_model, tmp_path):
    # bin/export again with a format (on a copy of the run: the fixture's exports stay): two
    # digits 0-4, then two or three digits. Every reading obeys it, in both formats.
    model_dir, records_dir = reading_model
    for name in (export.CONFIG_FILE, export.KERAS_MODEL):
        shutil.copy(os.path.join(model_dir, name), tmp_path)
    pattern = "[0-4]{2}[0-9]{2,3}"

    def export_with(*flags):
        return subprocess.run([os.path.join(PROJECT_DIR, "bin", "export"), "--model_dir",
                               str(tmp_path), *flags], capture_output=True, text=True,
                              timeout=300)
    for form in ("saved_model", "tflite"):
        result = export_with("--format", form, "--plate_format", pattern)
        assert result.returncode == 0 and f"(plate format {pattern})" in result.stdout, (
            result.stderr)
    batch = next(evaluate.read_split(records_dir, "test", 200))
    saved = evaluate.load_predictor(str(tmp_path))[0](batch["image"])[0]
    lite = evaluate.load_predictor(str(tmp_path / export.TFLITE_MODEL))[0](batch["image"])[0]
    assert all(re.fullmatch(pattern, text) for text in saved) and saved == lite
    fits = [bool(re.fullmatch(pattern, truth)) for truth in batch["text"]]
    assert 20 < sum(fits) < 180
    assert np.mean([text == truth for text, truth, fit in zip(saved, batch["text"], fits)
                    if fit]) >= 0.9  # what the format allows is read as before
    result = export_with("--format", "saved_model", "--plate_format", "[A-Z]{5}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "export: error: plate format '[A-Z]{5}': [A-Z] has no character of the alphabet "
        "'0123456789'")


@pytest.mark.slow
def test_the_threshold_is_a_constant_of_the_serving_function(reading_model):
    model_dir, records_dir = reading_model
    trained = keras.models.load_model(f"{model_dir}/{export.KERAS_MODEL}")
    images = next(evaluate.read_split(records_dir, "test", 8))["image"]
    readable = {threshold: read_with(export.serving_function(
        trained, "0123456789", FIVE, *images.shape[1:], min_confidence=threshold), images)
        ["readable"] for threshold in (0.0, 1.01)}
    assert readable[0.0].all() and not readable[1.01].any()


def test_an_export_without_a_threshold_reads_everything(tmp_path):
    # As exports were made before the threshold: text and confidence, no min_confidence.
    crnn = model.build_crnn(smoke_config("unused").model, 64, 128, 11)
    serve = export.serving_function(crnn, "0123456789", FIVE, 64, 128)

    @tf.function(input_signature=serve.input_signature)
    def old_serve(images):
        outputs = serve(images)
        return {"text": outputs["text"], "confidence": outputs["confidence"]}
    archive = keras.export.ExportArchive()
    archive.track(crnn)
    archive.add_endpoint("serving_default", old_serve)
    archive.write_out(str(tmp_path / "export"), verbose=False)
    assert export.load_export(str(tmp_path / "export"))[1] == 0.0
    predict, _ = evaluate.load_predictor(str(tmp_path))
    assert predict.min_confidence == 0.0
    texts, confidences = predict(np.full((2, 64, 128), 255, np.uint8))
    assert len(texts) == 2 and confidences.shape == (2,)
