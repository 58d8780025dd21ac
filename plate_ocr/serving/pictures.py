"""Pictures a person would rather look at than read: plates with their predictions."""

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RIGHT = (20, 140, 40)
WRONG = (200, 30, 30)
_CAPTION = 20


def prediction_grid(images: Sequence[np.ndarray], predictions: Sequence[str],
                    truths: Sequence[str | None], columns: int = 4) -> np.ndarray:
    """Draws plates in a grid, each captioned with its prediction.

    Args:
      images: uint8 [H, W] grayscale plates (any size; each is shown as it is).
      predictions: the model's reading of each plate.
      truths: the true text, or None where unknown (caption drawn in black).
      columns: plates per row.
    Returns:
      uint8 RGB [rows * (h + caption), columns * w, 3]; a wrong reading is red and shows the
      truth beside it, a right one is green.
    """
    cell_h = max(image.shape[0] for image in images) + _CAPTION
    cell_w = max(max(image.shape[1] for image in images), 128)
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for i, (image, prediction, truth) in enumerate(zip(images, predictions, truths)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        sheet.paste(Image.fromarray(image).convert("RGB"), (x, y))
        if truth is None:
            caption, colour = prediction or "(none)", (0, 0, 0)
        elif prediction == truth:
            caption, colour = prediction, RIGHT
        else:
            caption, colour = f"{prediction or '(none)'} (is {truth})", WRONG
        draw.text((x + 2, y + cell_h - _CAPTION + 2), caption, fill=colour, font=font)
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], outline=(210, 210, 210))
    return np.asarray(sheet)


def save_png(image: np.ndarray, path: str) -> str:
    """Writes an image array as PNG (parent folders created; gs:// too)."""
    with _open_for_writing(path) as f:
        Image.fromarray(image).save(f, format="PNG")
    return path


def _open_for_writing(path: str):
    import tensorflow as tf  # here: drawing pictures needs no TensorFlow otherwise
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    return tf.io.gfile.GFile(path, "wb")


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display), imported only when drawing."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def _save_figure(figure, path: str) -> str:
    """Writes a figure as PNG (parent folders created; gs:// too) and frees it."""
    with _open_for_writing(path) as f:
        figure.savefig(f, format="png")
    _pyplot().close(figure)
    return path


def confusion_png(matrix: np.ndarray, alphabet: str, path: str, title: str) -> str:
    """Draws a character confusion matrix (rows: truth, columns: prediction) as a PNG."""
    figure, axes = _pyplot().subplots(figsize=(6, 5.2), dpi=100)
    # Log colours: the diagonal holds thousands, the mistakes a handful.
    axes.imshow(np.log1p(matrix), cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if row == column else ("black" if count < 3 else "red"))
    axes.set_xticks(range(len(alphabet)), list(alphabet))
    axes.set_yticks(range(len(alphabet)), list(alphabet))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    return _save_figure(figure, path)


def time_to_accuracy_png(history: Sequence[dict], path: str, targets: Sequence[float],
                         title: str) -> str:
    """Plots validation plate accuracy against minutes of training, with the target lines.

    Args:
      history: the run's history.json entries ("train_seconds", "val": {"plate_accuracy"}).
      path: the PNG to write.
      targets: accuracies drawn as dotted lines.
      title: the plot's title.
    """
    minutes = [entry["train_seconds"] / 60 for entry in history]
    # Plotted as error, log scale: 99% and 99.9% are a decade apart instead of a pixel.
    errors = [max(1 - entry["val"]["plate_accuracy"], 1e-4) for entry in history]
    figure, axes = _pyplot().subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
    axes.plot(minutes, errors, marker="o", markersize=3)
    for target in targets:
        axes.axhline(1 - target, linestyle=":", color="gray")
        # x in axes coordinates (right edge), y in data: the label stays inside the plot.
        axes.text(0.99, 1 - target, f"{100 * target:g}%", transform=axes.get_yaxis_transform(),
                  ha="right", va="bottom", fontsize=8, color="gray")
    axes.set_yscale("log")
    axes.set_xlim(left=0)
    axes.set_xlabel("minutes of training")
    axes.set_ylabel("validation plate error (1 - accuracy)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    return _save_figure(figure, path)


def reliability_png(bins: Sequence[dict], path: str, title: str) -> str:
    """Draws accuracy against confidence (calibration.reliability's bins) as a PNG.

    Top: each bin's accuracy as a bar over its confidence range, its mean confidence as a
    dot, the diagonal a calibrated model would follow. Bottom: plates per bin (log scale).
    """
    figure, (top, bottom) = _pyplot().subplots(
        2, 1, figsize=(6, 6), dpi=100, sharex=True, height_ratios=[3, 1], layout="constrained")
    full = [b for b in bins if b["plates"]]
    lows = [b["low"] for b in full]
    widths = [b["high"] - b["low"] for b in full]
    top.bar(lows, [b["accuracy"] for b in full], widths, align="edge", color="tab:blue",
            edgecolor="white", label="accuracy")
    top.plot([b["mean_confidence"] for b in full], [b["accuracy"] for b in full], "o",
             color="black", markersize=3, label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("plates read right")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lows, [b["plates"] for b in full], widths, align="edge", color="tab:gray",
               edgecolor="white")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (probability of the reading)")
    bottom.set_ylabel("plates")
    return _save_figure(figure, path)
