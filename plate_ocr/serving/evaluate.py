"""Evaluate an exported model on a records split: overall, per font, position and size.

Evaluation runs the SavedModel a user would ship (uint8 images -> strings), so the figures
are those of the exported artifact, not of the training graph.
"""

import collections
import json
import os

import keras
import numpy as np
import tensorflow as tf

from plate_ocr.data import records
from plate_ocr.serving import calibration, export
from plate_ocr.training import input_pipeline, plate_format


def _config_beside(path: str) -> dict:
    config = os.path.join(os.path.dirname(os.path.abspath(path)), export.CONFIG_FILE)
    if not os.path.exists(config):
        raise FileNotFoundError(f"no {export.CONFIG_FILE} beside {path}: it names the "
                                "alphabet")
    with open(config, encoding="utf-8") as f:
        return json.load(f)


def model_path(path: str) -> str:
    """What load_predictor loads from a path: a model dir's SavedModel, or the path itself."""
    saved_model = os.path.join(path, export.SAVED_MODEL)
    return saved_model if os.path.exists(os.path.join(saved_model, "saved_model.pb")) else path


def model_alphabet(path: str) -> str | None:
    """The alphabet of the model that load_predictor loads from path (its training's
    config.json), None without a readable config.json beside it."""
    try:
        return _config_beside(model_path(path))["alphabet"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def load_predictor(path: str, threads: int | None = None):
    """Loads a trained model: a model dir, its SavedModel, its .keras or its .tflite file.

    `threads` is a TFLite model's (None: every core; export.load_tflite); TensorFlow's are
    the process's (tf.config.threading, before TensorFlow first runs).

    Returns:
      (predict(uint8 [N, H, W]) -> (list of N strings, float32 [N] confidences), (H, W)).
      The confidence is the probability of the reading (ctc.read_plates) in every format;
      predict.min_confidence is the model's reject threshold (export.load_export).
    Raises:
      FileNotFoundError: nothing loadable there (one-line message).
    """
    path = model_path(path)
    if path.endswith(".tflite"):
        predict = export.load_tflite(path, _config_beside(path)["alphabet"], threads)
        shape = tf.lite.Interpreter(model_path=path).get_input_details()[0]["shape_signature"]
        return predict, tuple(int(d) for d in shape[1:])
    if path.endswith(".keras"):
        model = keras.models.load_model(path)
        shape = tuple(model.input_shape[1:])
        config = _config_beside(path)
        serve = export.serving_function(model, config["alphabet"], plate_format.for_model(
            config.get("plate_format", ""), config["alphabet"], records.plate_lengths(config)),
            *shape)
        min_confidence = export.MIN_CONFIDENCE
    else:
        serve, min_confidence = export.load_export(path)
        shape = tuple(serve.structured_input_signature[1]["images"].shape[1:])

    def predict(images: np.ndarray) -> tuple[list[str], np.ndarray]:
        outputs = serve(images=tf.constant(images, tf.uint8))
        return ([text.decode() for text in outputs["text"].numpy()],
                outputs["confidence"].numpy())
    predict.min_confidence = min_confidence
    return predict, shape


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two short strings."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def plate_metrics(truths: list[str], predictions: list[str]) -> dict:
    """Plate accuracy, character accuracy (position by position) and CER over the truth length."""
    chars = sum(len(t) for t in truths)
    return {
        "plates": len(truths),
        "plate_accuracy": float(np.mean([t == p for t, p in zip(truths, predictions)]))
        if truths else 0.0,
        "char_accuracy": sum(sum(a == b for a, b in zip(t, p))
                             for t, p in zip(truths, predictions)) / max(chars, 1),
        "cer": sum(edit_distance(p, t) for t, p in zip(truths, predictions)) / max(chars, 1),
    }


def confusion_matrix(truths: list[str], predictions: list[str], alphabet: str) -> np.ndarray:
    """Counts [truth char, predicted char] over plates read with the right length."""
    index = {char: i for i, char in enumerate(alphabet)}
    matrix = np.zeros((len(alphabet), len(alphabet)), np.int64)
    for truth, prediction in zip(truths, predictions):
        if len(truth) == len(prediction):
            for a, b in zip(truth, prediction):
                if b in index:
                    matrix[index[a], index[b]] += 1
    return matrix


def report(truths: list[str], predictions: list[str], fonts: list[str], sizes: list[int],
           alphabet: str) -> dict:
    """Overall metrics and their breakdowns by font, digit position and font size."""
    def grouped(keys):
        groups = collections.defaultdict(list)
        for key, truth, prediction in zip(keys, truths, predictions):
            groups[key].append((truth, prediction))
        return {str(key): plate_metrics(*map(list, zip(*pairs)))
                for key, pairs in sorted(groups.items())}
    length = max((len(t) for t in truths), default=0)
    return dict(
        plate_metrics(truths, predictions),
        per_font=grouped(fonts),
        per_font_size=grouped(sizes),
        # Over the plates that have a character there (plates of several lengths).
        per_position=[float(np.mean([len(p) > i and p[i] == t[i]
                                     for t, p in zip(truths, predictions) if len(t) > i]))
                      for i in range(length)],
        confusion=confusion_matrix(truths, predictions, alphabet).tolist(),
        wrong_length=sum(len(t) != len(p) for t, p in zip(truths, predictions)))


def read_split(records_dir: str, split: str, batch_size: int = 512,
               files: list[str] | None = None):
    """Yields batches of every record of a split (or of some of its files): images and the
    text, font and font size features."""
    info = records.read_info(records_dir)
    files = files or records.split_files(info, records_dir, split)
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "text": tf.io.FixedLenFeature([], tf.string),
            "font": tf.io.FixedLenFeature([], tf.string),
            "font_size": tf.io.FixedLenFeature([], tf.int64)}
    shape = [-1, info["image_height"], info["image_width"]]
    dataset = (tf.data.TFRecordDataset(files).batch(batch_size)
               .map(lambda s: tf.io.parse_example(s, spec)).prefetch(2))
    for batch in dataset:
        yield {"image": tf.reshape(tf.io.decode_raw(batch["image"], tf.uint8), shape).numpy(),
               "text": [t.decode() for t in batch["text"].numpy()],
               "font": [f.decode() for f in batch["font"].numpy()],
               "font_size": batch["font_size"].numpy().tolist()}


def evaluate_split(predict, records_dir: str, split: str, batch_size: int = 512,
                   max_misread: int = 64, on_batch=lambda n: None,
                   skip_corrupt: bool = False) -> tuple[dict, list]:
    """Predicts every plate of a split, after checking its shards against the metadata.

    Returns:
      (report dict with "calibration" (calibration.calibration of the confidences, at
       calibration.THRESHOLDS and the predictor's min_confidence) and "min_confidence",
       up to max_misread (image, prediction, truth) of misread plates).
    Raises:
      ValueError: a shard is missing or corrupt (and skip_corrupt is off).
    """
    info = records.read_info(records_dir)
    files, lost = input_pipeline.readable_files(info, records_dir, split, skip_corrupt)
    truths, predictions, confidences, fonts, sizes, misread = [], [], [], [], [], []
    for batch in read_split(records_dir, split, batch_size, files):
        texts, batch_confidences = predict(batch["image"])
        for image, text, truth in zip(batch["image"], texts, batch["text"]):
            if text != truth and len(misread) < max_misread:
                misread.append((image, text, truth))
        truths += batch["text"]
        predictions += texts
        confidences += np.asarray(batch_confidences, np.float64).tolist()
        fonts += batch["font"]
        sizes += batch["font_size"]
        on_batch(len(texts))
    min_confidence = getattr(predict, "min_confidence", None)
    thresholds = set(calibration.THRESHOLDS) | ({min_confidence} if min_confidence is not None
                                                else set())
    correct = [t == p for t, p in zip(truths, predictions)]
    return (dict(report(truths, predictions, fonts, sizes, info["alphabet"]), lost_records=lost,
                 min_confidence=min_confidence,
                 calibration=calibration.calibration(confidences, correct, thresholds)),
            misread)


def format_table(result: dict, worst: int = 5) -> str:
    """A short text table of a report: overall figures, positions, sizes, the worst fonts."""
    lines = [f"split {result.get('split', '?')}: {result['plates']:,} plates",
             f"  plate accuracy   {result['plate_accuracy']:.4f}",
             f"  char accuracy    {result['char_accuracy']:.4f}",
             f"  CER              {result['cer']:.4f}",
             f"  wrong length     {result['wrong_length']}",
             "  per position     " + "  ".join(f"{a:.4f}" for a in result["per_position"]),
             "  per font size    " + "  ".join(f"{size}: {m['plate_accuracy']:.4f}"
                                               for size, m in result["per_font_size"].items())]
    if result.get("lost_records"):
        lines.append(f"  records lost     {result['lost_records']} (corrupt shards left out)")
    fonts = sorted(result["per_font"].items(), key=lambda kv: kv[1]["plate_accuracy"])[:worst]
    lines.append("  worst fonts      " + "; ".join(
        f"{name} {m['plate_accuracy']:.4f} ({m['plates']})" for name, m in fonts))
    if "calibration" in result:
        lines += calibration.format_calibration(result["calibration"],
                                                result.get("min_confidence"))
    return "\n".join(lines)
