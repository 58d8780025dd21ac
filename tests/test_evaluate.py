"""Metrics on hand-made predictions, and the export formats agreeing on a split."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from plate_ocr.serving import evaluate, export
from plate_ocr.training import ctc, model, plate_format, train

from test_train import STRATEGY, smoke_config


def test_plate_metrics_on_hand_made_predictions():
    truths = ["12345", "12345", "12345", "12345"]
    predictions = ["12345", "1234", "123456", ""]  # right, one dropped, one extra, empty
    metrics = evaluate.plate_metrics(truths, predictions)
    assert metrics["plates"] == 4 and metrics["plate_accuracy"] == 0.25
    assert metrics["char_accuracy"] == 14 / 20
    assert metrics["cer"] == pytest.approx(7 / 20)


def test_string_metrics_agree_with_the_training_metrics():
    labels = tf.constant([[1, 2, 3, 4, 5]] * 3, tf.int32)
    decoded = tf.constant([[1, 2, 3, 4, 5, -1], [1, 3, 4, 5, -1, -1], [-1] * 6], tf.int32)
    rates = ctc.rates(ctc.metric_sums(labels, decoded, tf.ones([3])))
    strings = evaluate.plate_metrics(["12345"] * 3, ["12345", "1345", ""])
    for key in ("plate_accuracy", "char_accuracy", "cer"):
        assert rates[key] == pytest.approx(strings[key])


def test_report_breaks_down_by_font_position_and_size():
    truths = ["11111", "22222", "33333"]
    predictions = ["11111", "22322", "3333"]
    result = evaluate.report(truths, predictions, ["A", "B", "B"], [18, 18, 25], "0123456789")
    assert result["per_font"]["A"]["plate_accuracy"] == 1.0
    assert result["per_font"]["B"]["plate_accuracy"] == 0.0
    assert result["per_font_size"]["18"]["plates"] == 2
    assert result["per_position"] == [1.0, 1.0, 2 / 3, 1.0, 2 / 3]
    confusion = np.array(result["confusion"])
    assert confusion[2, 3] == 1 and confusion[2, 2] == 4 and confusion.sum() == 10
    assert result["wrong_length"] == 1
    assert "plate accuracy" in evaluate.format_table(dict(result, split="test"))


@pytest.fixture(scope="module")
def trained(tiny_records, tmp_path_factory):
    """A smoke model trained on the tiny records: (model dir, training result)."""
    model_dir = str(tmp_path_factory.mktemp("trained"))
    config = smoke_config(tiny_records, epochs=1, steps_per_epoch=6, learning_rate=3e-3,
                          export=True)
    return model_dir, train.train_and_evaluate(config, model_dir, STRATEGY)


@pytest.mark.slow
def test_saved_model_keras_and_tflite_give_the_same_predictions(trained, tiny_records):
    model_dir, result = trained
    config = json.load(open(f"{model_dir}/config.json"))
    model_config = model.config_from_dict(config["model"])
    export.export_tflite(keras.models.load_model(f"{model_dir}/{export.KERAS_MODEL}"),
                         model_config, plate_format.exactly(config["plate_length"], 10),
                         f"{model_dir}/{export.TFLITE_MODEL}")
    readings = {}
    for name in (model_dir, f"{model_dir}/{export.KERAS_MODEL}",
                 f"{model_dir}/{export.TFLITE_MODEL}"):
        predict, shape = evaluate.load_predictor(name)
        assert shape == (64, 128)
        texts = [predict(batch["image"])[0] for batch in evaluate.read_split(tiny_records, "test")]
        readings[name] = sum(texts, [])
    saved, keras_model, tflite = readings.values()
    assert len(saved) == 40
    assert saved == keras_model
    # TFLite runs other kernels (XNNPACK): allow a rare flip on a near tie.
    assert np.mean([a == b for a, b in zip(saved, tflite)]) >= 0.95
    # And evaluating the SavedModel gives what training's own evaluation gave.
    report, misread = evaluate.evaluate_split(evaluate.load_predictor(model_dir)[0],
                                              tiny_records, "test", batch_size=16)
    assert report["plates"] == 40
    assert report["plate_accuracy"] == pytest.approx(result["test"]["plate_accuracy"])
    assert report["cer"] == pytest.approx(result["test"]["cer"])
    assert len(misread) == round(40 * (1 - report["plate_accuracy"]))
    # With the calibration of its confidences, at the usual thresholds and the model's own.
    assert report["min_confidence"] == export.MIN_CONFIDENCE
    assert sum(b["plates"] for b in report["calibration"]["bins"]) == 40
    assert {t["threshold"] for t in report["calibration"]["thresholds"]} == {
        0.5, 0.8, 0.9, 0.95, 0.99}
    assert "ECE" in evaluate.format_table(dict(report, split="test"))
