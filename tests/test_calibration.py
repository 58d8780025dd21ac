"""Calibration figures on hand-made confidences, and the images that are no plate."""

import numpy as np
import pytest

from plate_ocr.serving import calibration


def test_a_calibrated_set_has_an_expected_calibration_error_near_zero():
    # In each bin, right exactly as often as the confidence says.
    confidences, correct = [], []
    for confidence, right, plates in ((0.05, 1, 20), (0.25, 5, 20), (0.55, 11, 20),
                                      (0.85, 17, 20), (0.975, 39, 40), (0.995, 199, 200)):
        confidences += [confidence] * plates
        correct += [True] * right + [False] * (plates - right)
    result = calibration.calibration(confidences, correct)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    full = {(b["low"], b["high"]): b for b in result["bins"] if b["plates"]}
    assert full[(0.2, 0.3)] == {"low": 0.2, "high": 0.3, "plates": 20, "accuracy": 0.25,
                                "mean_confidence": 0.25}
    assert full[(0.99, 1.0)]["plates"] == 200
    assert sum(b["plates"] for b in result["bins"]) == len(confidences)
    assert [b["low"] for b in result["bins"]] == list(calibration.BIN_EDGES[:-1])


def test_an_overconfident_set_has_the_gap_as_its_error():
    # Always 0.9 sure, right half the time: 0.4 off everywhere. 1.0 falls in the last bin.
    result = calibration.calibration([0.9] * 10 + [1.0] * 10, [True, False] * 10)
    assert result["ece"] == pytest.approx((10 * 0.4 + 10 * 0.5) / 20)
    assert result["bins"][-1]["plates"] == 10 and result["bins"][-1]["accuracy"] == 0.5


def test_wrong_readings_above_each_threshold_are_counted():
    confidences = [0.3, 0.6, 0.85, 0.92, 0.96, 0.995, 0.999, 0.5, 0.8, 0.99]
    correct = [False, False, True, False, True, True, True, True, False, False]
    result = calibration.calibration(confidences, correct, thresholds=(0.99, 0.5, 0.8))
    by_threshold = {t["threshold"]: t for t in result["thresholds"]}
    assert list(by_threshold) == [0.5, 0.8, 0.99]  # sorted
    # At 0.5 (at or above passes): all but 0.3 pass; the wrong ones passing: 0.6, 0.92, 0.8,
    # 0.99 of the 5 wrong.
    assert by_threshold[0.5] == {"threshold": 0.5, "accepted": 9, "coverage": 0.9,
                                 "accuracy_accepted": 5 / 9, "wrong_accepted": 4,
                                 "wrong_above": 4 / 5}
    assert by_threshold[0.8]["accepted"] == 7 and by_threshold[0.8]["wrong_accepted"] == 3
    assert by_threshold[0.99]["accepted"] == 3 and by_threshold[0.99]["wrong_accepted"] == 1
    assert by_threshold[0.99]["wrong_above"] == pytest.approx(1 / 5)
    # No wrong readings, nothing accepted: no share to report, not a division by zero.
    nothing = calibration.at_threshold([0.1, 0.2], [True, True], 0.5)
    assert nothing["accepted"] == 0 and nothing["accuracy_accepted"] is None
    assert nothing["wrong_above"] is None
    lines = calibration.format_calibration(result, min_confidence=0.8)
    assert lines[0].split()[:2] == ["ECE", f"{result['ece']:.4f}"]
    assert sum(line.lstrip().startswith("*0.8") for line in lines) == 1


def test_non_plates_are_what_they_say_and_repeatable():
    noise = calibration.non_plates("noise", 4, 64, 128, seed=3)
    blank = calibration.non_plates("blank", 4, 64, 128, seed=3)
    photo = calibration.non_plates("photo", 4, 64, 128, seed=3)
    for images in (noise, blank, photo):
        assert images.shape == (4, 64, 128) and images.dtype == np.uint8
    assert noise.std() > 60  # uniform over 0-255: std ~74
    assert np.all(blank.reshape(4, -1).std(axis=1) == 0)
    # Photo-like: smooth (neighbours close, unlike noise) but not flat.
    steps = np.abs(np.diff(photo.astype(int), axis=2)).mean()
    assert steps < 10 and photo.reshape(4, -1).std(axis=1).min() > 10
    np.testing.assert_array_equal(photo, calibration.non_plates("photo", 4, 64, 128, seed=3))


def test_rejection_counts_non_plates_at_or_above_the_threshold():
    def predict(images):  # sure of blank images only
        flat = images.reshape(len(images), -1).std(axis=1) == 0
        return ["00000"] * len(images), np.where(flat, 0.9, 0.1).astype(np.float32)
    result = calibration.rejection(predict, 5, 64, 128, min_confidence=0.5)
    assert result["blank"] == {"images": 5, "accepted": 5, "max_confidence": pytest.approx(0.9)}
    assert result["noise"]["accepted"] == 0 and result["photo"]["accepted"] == 0
