"""Export a trained CRNN: SavedModel (uint8 images -> strings), .keras model, Keras weights."""

import errno
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from plate_ocr import ctc, model as model_lib

SAVED_MODEL = "export"
KERAS_MODEL = "model.keras"
KERAS_WEIGHTS = "model.weights.h5"
TFLITE_MODEL = "model.tflite"
CONFIG_FILE = "config.json"  # written by training: image size, alphabet, model shape


def serving_function(model: keras.Model, alphabet: str | None, plate_length: int,
                     height: int, width: int):
    """A tf.function: uint8 [N, H, W] -> {"text": string [N], "confidence": float32 [N]}.

    It reads exactly plate_length characters per plate (ctc.fixed_length_decode). With
    alphabet None it returns {"labels": int32 [N, plate_length], "confidence"} instead
    (TFLite's built-in ops have no strings).
    """
    @tf.function(input_signature=[tf.TensorSpec([None, height, width], tf.uint8, name="images")])
    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        decoded, confidence = ctc.fixed_length_decode(logits, plate_length)
        if alphabet is None:
            return {"labels": decoded, "confidence": confidence}
        return {"text": ctc.to_strings(decoded, alphabet), "confidence": confidence}
    return serve


def _write_archive(model: keras.Model, path: str, serve) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(path, verbose=False)


def export_model(model: keras.Model, config: model_lib.ModelConfig, export_root: str,
                 alphabet: str, plate_length: int, height: int, width: int) -> dict:
    """Writes the three export formats into export_root.

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
                   serving_function(inference, alphabet, plate_length, height, width))
    paths = {"saved_model": saved_model,
             "keras": os.path.join(export_root, KERAS_MODEL),
             "weights": os.path.join(export_root, KERAS_WEIGHTS)}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    return paths


def load_serving(saved_model: str):
    """Loads an exported SavedModel's serving function (uint8 images -> text, confidence)."""
    if not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel in {saved_model}: train a model with bin/train "
                                "(it exports into <model_dir>/export)")
    return tf.saved_model.load(saved_model).signatures["serving_default"]


def export_tflite(model: keras.Model, config: model_lib.ModelConfig, plate_length: int,
                  path: str) -> str:
    """Writes a TFLite model (built-in ops only): uint8 images -> labels, confidence."""
    height, width = model.input_shape[1:]
    # The RNN unrolled: no tensor-list while loop to convert.
    unrolled = model_lib.fold_batch_norm(model, config, unroll=True)
    with tempfile.TemporaryDirectory() as scratch:
        _write_archive(unrolled, scratch,
                       serving_function(unrolled, None, plate_length, height, width))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    with open(path + ".tmp", "wb") as f:
        f.write(flatbuffer)
    os.replace(path + ".tmp", path)
    return path


def load_tflite(path: str, alphabet: str):
    """A predict(uint8 [N, H, W]) -> (strings, confidences) running a TFLite model."""
    runner = tf.lite.Interpreter(model_path=path).get_signature_runner()

    def predict(images: np.ndarray) -> tuple[list[str], np.ndarray]:
        outputs = runner(images=np.asarray(images, np.uint8))
        texts = ["".join(alphabet[i] for i in row if i >= 0) for row in outputs["labels"]]
        return texts, outputs["confidence"]
    return predict
