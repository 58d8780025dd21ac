"""Does the confidence mean what it says: reliability bins, calibration error, rejection.

The exports' confidence is the probability of the reading (ctc.read_plates); a reader
rejects readings under a threshold (export.MIN_CONFIDENCE by default). These figures say
how often a reading of a given confidence is right, how many plates a threshold keeps and
how many wrong readings still pass it, and whether images that are no plate at all pass.
"""

import numpy as np

# Finer at the top: most readings of a good model are above 0.99, and the errors that
# matter are the confident ones.
BIN_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)
NON_PLATES = ("noise", "blank", "photo")


def reliability(confidences, correct, edges=BIN_EDGES) -> list[dict]:
    """Accuracy against confidence: one entry per bin [low, high) (the last one holds 1.0).

    Returns:
      [{"low", "high", "plates", "accuracy", "mean_confidence"}]; accuracy and
      mean_confidence are None in an empty bin.
    """
    confidences, correct = np.asarray(confidences, np.float64), np.asarray(correct, bool)
    index = np.searchsorted(np.asarray(edges[1:-1]), confidences, side="right")
    bins = []
    for b, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        inside = index == b
        count = int(inside.sum())
        bins.append({"low": low, "high": high, "plates": count,
                     "accuracy": float(correct[inside].mean()) if count else None,
                     "mean_confidence": float(confidences[inside].mean()) if count else None})
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of plates."""
    plates = sum(b["plates"] for b in bins)
    return sum(b["plates"] * abs(b["accuracy"] - b["mean_confidence"])
               for b in bins if b["plates"]) / max(plates, 1)


def at_threshold(confidences, correct, threshold: float) -> dict:
    """What rejecting readings under a threshold keeps.

    Returns:
      {"threshold", "accepted": plates at or above it, "coverage": their share of all plates,
       "accuracy_accepted": right among them, "wrong_accepted": wrong readings among them,
       "wrong_above": the share of all wrong readings that pass (None without any)}.
    """
    confidences, correct = np.asarray(confidences, np.float64), np.asarray(correct, bool)
    accepted = confidences >= threshold
    wrong = int((~correct).sum())
    wrong_accepted = int((accepted & ~correct).sum())
    return {"threshold": float(threshold), "accepted": int(accepted.sum()),
            "coverage": float(accepted.mean()) if len(accepted) else 0.0,
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
            "wrong_accepted": wrong_accepted,
            "wrong_above": wrong_accepted / wrong if wrong else None}


def calibration(confidences, correct, thresholds=THRESHOLDS) -> dict:
    """The reliability bins, the expected calibration error and the figures at thresholds."""
    bins = reliability(confidences, correct)
    return {"bins": bins, "ece": expected_calibration_error(bins),
            "mean_confidence": float(np.mean(confidences)) if len(confidences) else 0.0,
            "thresholds": [at_threshold(confidences, correct, t) for t in sorted(thresholds)]}


def format_calibration(result: dict, min_confidence: float | None = None) -> list[str]:
    """A few table lines: ECE, the non-empty bins, coverage and wrong readings per threshold."""
    bins = [b for b in result["bins"] if b["plates"]]
    lines = [f"  ECE              {result['ece']:.4f} (mean confidence "
             f"{result['mean_confidence']:.4f})",
             "  reliability      " + "  ".join(
                 f"{b['low']:g}-{b['high']:g}: {b['accuracy']:.3f} ({b['plates']})"
                 for b in bins),
             "  min confidence   coverage  accepted acc  wrong above"]
    for t in result["thresholds"]:
        wrong = (f"{t['wrong_accepted']} ({t['wrong_above']:.3f} of wrong)"
                 if t["wrong_above"] is not None else "0 (no wrong)")
        accuracy = (f"{t['accuracy_accepted']:.4f}" if t["accuracy_accepted"] is not None
                    else "-")
        mark = " *" if min_confidence is not None and t["threshold"] == min_confidence else "  "
        lines.append(f"  {mark}{t['threshold']:<14g} {t['coverage']:8.4f}  {accuracy:>12s}  "
                     f"{wrong}")
    return lines


def non_plates(kind: str, count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Images that are no plate, which a reader must reject: uint8 [count, height, width].

    kind: "noise" (uniform pixels), "blank" (one grey level each) or "photo" (a natural-
    image-like texture: 1/f noise with a random slope, a few flat blobs of other grey
    levels, a random brightness range).
    """
    rng = np.random.default_rng([seed, NON_PLATES.index(kind)])
    if kind == "noise":
        return rng.integers(0, 256, (count, height, width), dtype=np.uint8)
    if kind == "blank":
        levels = rng.integers(0, 256, count).astype(np.uint8)
        return np.repeat(np.repeat(levels[:, None, None], height, 1), width, 2)
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None])
    frequency[0, 0] = 1.0
    rows, columns = np.mgrid[:height, :width]
    images = []
    for _ in range(count):
        spectrum = ((rng.normal(size=frequency.shape) + 1j * rng.normal(size=frequency.shape))
                    / frequency ** rng.uniform(1.0, 1.6))
        spectrum[0, 0] = 0.0
        image = np.fft.irfft2(spectrum, s=(height, width))
        image /= image.std()
        for _ in range(rng.integers(2, 8)):
            centre = rng.uniform(0, height), rng.uniform(0, width)
            radii = rng.uniform(3, height / 3), rng.uniform(3, width / 4)
            inside = (((rows - centre[0]) / radii[0]) ** 2
                      + ((columns - centre[1]) / radii[1]) ** 2) < 1
            image = np.where(inside, 2 * rng.normal() + 0.2 * image, image)
        image = (image - image.min()) / (np.ptp(image) + 1e-9)
        low, high = sorted(rng.uniform(0, 255, 2))
        images.append(np.clip(low + (high - low + 60) * image, 0, 255).astype(np.uint8))
    return np.stack(images)


def rejection(predict, count: int, height: int, width: int, min_confidence: float,
              seed: int = 0) -> dict:
    """How many non-plates of each kind a predictor reads at or above min_confidence.

    Returns:
      {kind: {"images", "accepted", "max_confidence"}}.
    """
    result = {}
    for kind in NON_PLATES:
        _, confidences = predict(non_plates(kind, count, height, width, seed))
        confidences = np.asarray(confidences)
        result[kind] = {"images": count, "accepted": int((confidences >= min_confidence).sum()),
                        "max_confidence": float(confidences.max())}
    return result
