"""Training a model. In: the records and dataset_info.json that data/ wrote (or plates composed
by TF ops from its glyph atlas), a TrainConfig and a tf.distribute strategy. Out: the Keras model
(logits) with CTC decoding and metrics, checkpoints, TensorBoard summaries, and at the end the
exports of serving/export.py."""
