"""Export a trained CRNN: SavedModel (uint8 images -> strings), .keras model, Keras weights."""

import concurrent.futures
import errno
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from plate_ocr.training import ctc, model as model_lib

SAVED_MODEL = "export"
KERAS_MODEL = "model.keras"
KERAS_WEIGHTS = "model.weights.h5"
TFLITE_MODEL = "model.tflite"
# bin/export --format: the TFLite variants, each file beside the others in the model dir.
# "dynamic": dynamic-range quantization, int8 weights (F5's file 0.65 MB against 1.17) and float
# activations quantized on the fly by the kernels of the convolutions, Dense layers and LSTM.
TFLITE_FILES = {"tflite": TFLITE_MODEL, "tflite_dynamic": "model-dynamic.tflite"}
# Plates per TFLite call when a batch is read on several cores (load_tflite): 8-16 read the
# most plates/s here, 32 and more fewer (docs/experiments.md, "Batched TFLite").
TFLITE_CHUNK = 16
CONFIG_FILE = "config.json"  # written by training: image size, alphabet, model shape
# The exports' default reject threshold on the confidence (the probability of the reading):
# below it a reading is "unreadable". Measured 2026-12-02 on three models (clean.cfg's recipe,
# a 10-minute robust fine-tune of it, and fast.cfg: robust from scratch in 10 minutes): no
# image that is no plate reached 0.3 (noise, blank and photo-like, calibration.non_plates:
# 2,000 of each per model); at 0.8 they keep 99.3-99.8% of the right readings of the test
# split and 98-98.7% of held-out fonts, and 2-5x fewer wrong readings pass than at 0.5
# (fast.cfg: test 2 against 4 of 10, held-out fonts 5 against 12 of 14, augmented 23
# against 51 of 172, foreign 10 against 30 of 101).
MIN_CONFIDENCE = 0.8


def serving_function(model: keras.Model, alphabet: str | None, masks: np.ndarray,
                     height: int, width: int, min_confidence: float = MIN_CONFIDENCE):
    """A tf.function: uint8 [N, H, W] -> {"text": string [N], "confidence": float32 [N],
    "readable": bool [N]}.

    It reads what the plate format `masks` accepts (plate_format.for_model: exactly the
    plate length by default); the confidence is the probability of that reading
    (ctc.read_plates) and a reading is readable when its confidence is at least
    min_confidence (a constant of the graph). With alphabet None it returns
    {"labels": int32 [N, places] (PAD past a shorter reading's end), "confidence",
    "readable"} instead (TFLite's built-in ops have no strings).
    """
    # No AutoGraph here or in the trainer's evaluation step: the decoders branch on Python
    # values only, and converting them cost ~1 s of each trace.
    @tf.function(input_signature=[tf.TensorSpec([None, height, width], tf.uint8, name="images")],
                 autograph=False)
    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        decoded, confidence = ctc.read_plates(logits, masks)
        outputs = {"confidence": confidence, "readable": confidence >= min_confidence}
        if alphabet is None:
            return dict(outputs, labels=decoded)
        return dict(outputs, text=ctc.to_strings(decoded, alphabet))
    return serve


def _write_archive(model: keras.Model, path: str, serve,
                   min_confidence: float = MIN_CONFIDENCE) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    # The threshold serve() holds as a constant, readable after loading:
    # tf.saved_model.load(path).min_confidence[0].
    archive.add_variable_collection(
        "min_confidence", [tf.Variable(min_confidence, trainable=False, dtype=tf.float64,
                                       name="min_confidence")])
    archive.write_out(path, verbose=False)


def export_model(model: keras.Model, config: model_lib.ModelConfig, export_root: str,
                 alphabet: str, masks: np.ndarray, height: int, width: int) -> dict:
    """Writes the three export formats into export_root; the SavedModel reads what the plate
    format `masks` accepts (plate_format.for_model).

    The SavedModel serves the model with BatchNorm folded into the convolutions (faster, same
    logits); the .keras model and weights are the trained model itself, to train on from.

    Returns:
      {format: path} of what was written.
    """
    os.makedirs(export_root, exist_ok=True)
    # h5py crashes the process when the disk fills mid-write: refuse before writing instead.
    needed = 8 * 4 * model.count_params() + (4 << 20)
    if not export_root.startswith("gs://") and shutil.disk_usage(export_root).free < needed:
        raise OSError(errno.ENOSPC, f"less than {needed >> 20} MB free for the exports",
                      export_root)
    saved_model = os.path.join(export_root, SAVED_MODEL)
    inference = model_lib.fold_batch_norm(model, config)
    _write_archive(inference, saved_model,
                   serving_function(inference, alphabet, masks, height, width))
    paths = {"saved_model": saved_model,
             "keras": os.path.join(export_root, KERAS_MODEL),
             "weights": os.path.join(export_root, KERAS_WEIGHTS)}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    return paths


def load_serving(saved_model: str):
    """Loads an exported SavedModel's serving function (uint8 images -> text, confidence,
    readable)."""
    return load_export(saved_model)[0]


def load_export(saved_model: str):
    """An exported SavedModel's serving function and the reject threshold stored with it.

    Returns:
      (serving function, min_confidence: 0 for exports made before there was one, so that
       every reading passes, as it did).
    """
    if not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel in {saved_model}: train a model with bin/train "
                                "(it exports into <model_dir>/export)")
    loaded = tf.saved_model.load(saved_model)
    stored = getattr(loaded, "min_confidence", None)
    return (loaded.signatures["serving_default"],
            float(stored[0].numpy()) if stored else 0.0)


def export_tflite(model: keras.Model, config: model_lib.ModelConfig, masks: np.ndarray,
                  path: str, variant: str = "tflite") -> str:
    """Writes a TFLite model (built-in ops only): uint8 images -> labels, confidence,
    readable, the labels what the plate format `masks` accepts (plate_format.for_model);
    variant is a key of TFLITE_FILES (float, or dynamic-range quantized)."""
    if variant not in TFLITE_FILES:
        raise ValueError(f"no TFLite variant {variant!r}: one of {', '.join(TFLITE_FILES)}")
    height, width = model.input_shape[1:]
    # The RNN unrolled: no tensor-list while loop to convert.
    unrolled = model_lib.fold_batch_norm(model, config, unroll=True)
    with tempfile.TemporaryDirectory() as scratch:
        _write_archive(unrolled, scratch,
                       serving_function(unrolled, None, masks, height, width))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant == "tflite_dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with open(path + ".tmp", "wb") as f:
        f.write(flatbuffer)
    os.replace(path + ".tmp", path)
    return path


def load_tflite(path: str, alphabet: str, threads: int | None = None):
    """A predict(uint8 [N, H, W]) -> (strings, confidences) running a TFLite model on
    `threads` cores (None: all of them).

    Up to TFLITE_CHUNK plates (one plate: latency) go to one interpreter on `threads` threads.
    More are cut into chunks of TFLITE_CHUNK, the last one padded, read by `threads`
    interpreters of one thread each, side by side (the interpreter releases the GIL): on this
    2-core machine 1.4x the plates/s of one interpreter on both threads at batch 256, whose
    activations no longer fit the caches (docs/experiments.md, "Batched TFLite").

    Its min_confidence attribute is this code's MIN_CONFIDENCE, the one bin/export baked into
    the model's readable output (TFLite keeps no variables to store it).
    """
    threads = threads or os.cpu_count() or 1
    single = tf.lite.Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    workers = [tf.lite.Interpreter(model_path=path, num_threads=1).get_signature_runner()
               for _ in range(threads)]
    pool = concurrent.futures.ThreadPoolExecutor(threads)

    def read_chunks(runner, images: np.ndarray) -> list[dict]:
        outputs = []
        for start in range(0, len(images), TFLITE_CHUNK):
            chunk = images[start:start + TFLITE_CHUNK]
            if len(chunk) < TFLITE_CHUNK:  # one input shape: no reallocation
                chunk = np.pad(chunk, [(0, TFLITE_CHUNK - len(chunk)), (0, 0), (0, 0)])
            outputs.append(runner(images=chunk))
        return outputs

    def run(images: np.ndarray) -> dict:
        if len(images) <= TFLITE_CHUNK:
            return single(images=images)
        # Each worker its own contiguous run of chunks: one interpreter per thread.
        bounds = np.linspace(0, -(-len(images) // TFLITE_CHUNK), threads + 1).astype(int)
        parts = pool.map(read_chunks, workers, [images[a * TFLITE_CHUNK:b * TFLITE_CHUNK]
                                                for a, b in zip(bounds, bounds[1:])])
        outputs = [output for part in parts for output in part]
        return {key: np.concatenate([output[key] for output in outputs])[:len(images)]
                for key in outputs[0]}

    def predict(images: np.ndarray) -> tuple[list[str], np.ndarray]:
        outputs = run(np.asarray(images, np.uint8))
        texts = ["".join(alphabet[i] for i in row if i >= 0) for row in outputs["labels"]]
        return texts, outputs["confidence"]
    predict.min_confidence = MIN_CONFIDENCE
    return predict
