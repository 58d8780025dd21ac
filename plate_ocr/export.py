"""Export a trained CRNN: SavedModel (uint8 images -> strings), .keras model, Keras weights."""

import os

import keras
import tensorflow as tf

from plate_ocr import ctc

SAVED_MODEL = "export"
KERAS_MODEL = "model.keras"
KERAS_WEIGHTS = "model.weights.h5"


def serving_function(model: keras.Model, alphabet: str, height: int, width: int):
    """A tf.function: uint8 [N, H, W] -> {"text": string [N], "confidence": float32 [N]}."""
    @tf.function(input_signature=[tf.TensorSpec([None, height, width], tf.uint8, name="images")])
    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        decoded, confidence = ctc.greedy_decode(logits)
        return {"text": ctc.to_strings(decoded, alphabet), "confidence": confidence}
    return serve


def export_model(model: keras.Model, export_root: str, alphabet: str, height: int,
                 width: int) -> dict:
    """Writes the three export formats into export_root.

    Returns:
      {format: path} of what was written.
    """
    os.makedirs(export_root, exist_ok=True)
    saved_model = os.path.join(export_root, SAVED_MODEL)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model, alphabet, height, width))
    archive.write_out(saved_model, verbose=False)
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
