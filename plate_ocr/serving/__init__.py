"""Using a trained model. In: the Keras model from training/ or its exported files, and records
or images to read. Out: SavedModel, .keras, weights and TFLite files, metrics with breakdowns and
calibration (confidence against accuracy, non-plates rejected), and pictures: plates with their
readings, confusion matrices, the time-to-accuracy curve."""
