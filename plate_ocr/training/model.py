"""build_crnn(config, ...) -> keras.Model: pixel values [B, H, W] -> logits [B, time, classes].

Convolution blocks shrink the height to a few rows and the width to the time axis; a
bidirectional RNN reads the columns left to right and back; a Dense layer gives one logit per
class (alphabet + blank) per time step. The model returns logits only: loss and decoding live
in ctc.py.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the CRNN."""

    # Filters of a 3x3 stride-2 convolution before the blocks (0: none). It halves both axes
    # for a quarter of the cost of a full-resolution convolution then a pooling.
    stem_filters: int = 0
    conv_filters: tuple[int, ...] = (32, 64, 128, 128)
    # Width pooling per block (height always halves): their product sets the time steps.
    pool_widths: tuple[int, ...] = (2, 2, 1, 1)
    dense_units: int = 128
    rnn_units: int = 64
    rnn: str = "lstm"  # "lstm" or "gru"
    # Columns each RNN step reads, and frames of logits it writes: the RNN runs over
    # time_steps / rnn_stride steps while CTC keeps one frame per column (the RNN's cost, about
    # half of a plate's inference time at 64 steps, divided by the stride).
    rnn_stride: int = 1
    dropout: float = 0.2
    # Keras' default 0.99 averages the statistics over ~100 steps: with a high learning rate
    # they lag the weights and inference-mode accuracy swings; 0.9 follows within ~10 steps.
    batch_norm_momentum: float = 0.99
    # "scale": pixel values / 255; "standardize": each plate to zero mean and unit deviation,
    # so that a grey, low-contrast or dark plate reaches the convolutions as a clean one does.
    input_norm: str = "scale"


def config_from_dict(values: dict) -> ModelConfig:
    """A ModelConfig from its JSON form (lists back to tuples)."""
    return ModelConfig(**{key: tuple(value) if isinstance(value, list) else value
                          for key, value in values.items()})


def time_steps(width: int, config: ModelConfig) -> int:
    """Time steps of the logits for images of this width."""
    return width // _stem_stride(config) // math.prod(config.pool_widths)


def _stem_stride(config: ModelConfig) -> int:
    return 2 if config.stem_filters else 1


OUTPUT_LAYER = "logits"  # the one layer whose shape follows the alphabet


def build_crnn(config: ModelConfig, height: int, width: int, num_classes: int,
               unroll: bool = False, folded: bool = False) -> keras.Model:
    """Builds the CRNN.

    Args:
      config: the shape.
      height, width: image size in pixels.
      num_classes: alphabet size + 1 (the blank).
      unroll: unroll the RNN over the time steps (TFLite's built-in ops have no while loop of
        tensor lists); same weights either way (an LSTM as UnrolledBiLSTM).
      folded: for inference: convolutions with a bias and no BatchNorm, to receive the weights
        of a trained model through fold_batch_norm.
    Returns:
      a model from float32 pixel values 0..255 [B, H, W] to float32 logits [B, T, classes].
    Raises:
      ValueError: when the convolutions leave no rows or too few time steps.
    """
    if len(config.pool_widths) != len(config.conv_filters):
        raise ValueError(f"{len(config.conv_filters)} conv blocks but "
                         f"{len(config.pool_widths)} pool widths")
    rows = height // _stem_stride(config) // 2 ** len(config.conv_filters)
    steps = time_steps(width, config)
    if rows < 1 or steps < 1:
        raise ValueError(f"{len(config.conv_filters)} conv blocks leave no rows or columns of a "
                         f"{height}x{width} image")
    if config.rnn_stride < 1 or steps % config.rnn_stride:
        raise ValueError(f"rnn_stride {config.rnn_stride} does not divide {steps} time steps")
    images = keras.Input((height, width), name="images")
    x = keras.layers.Reshape((height, width, 1))(images)
    if config.input_norm == "standardize":
        x = Standardize(name="standardize")(x)
    elif config.input_norm == "scale":
        x = keras.layers.Rescaling(1 / 255.0)(x)
    else:
        raise ValueError(f"input_norm must be 'scale' or 'standardize', not {config.input_norm!r}")

    def conv_norm_relu(x, filters: int, strides: int, suffix: str):
        # Named conv<suffix> / batch_norm<suffix>: fold_batch_norm pairs them by name.
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=folded,
                                name=f"conv{suffix}")(x)
        if not folded:
            x = FusedBatchNorm(momentum=config.batch_norm_momentum,
                               name=f"batch_norm{suffix}")(x)
        return keras.layers.ReLU()(x)

    if config.stem_filters:
        x = conv_norm_relu(x, config.stem_filters, 2, "_stem")
    for block, (filters, pool_width) in enumerate(zip(config.conv_filters, config.pool_widths)):
        x = conv_norm_relu(x, filters, 1, str(block))
        x = keras.layers.MaxPooling2D((2, pool_width))(x)
    # [B, rows, steps, C] -> [B, steps, rows * C]: each time step sees a whole column.
    x = keras.layers.Permute((2, 1, 3))(x)
    x = keras.layers.Reshape((steps, rows * config.conv_filters[-1]))(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="columns")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    stride = config.rnn_stride
    if stride > 1:  # [B, steps, D] -> [B, steps / stride, stride * D]: neighbours side by side
        x = keras.layers.Reshape((steps // stride, stride * config.dense_units))(x)
    if unroll and config.rnn == "lstm":
        x = UnrolledBiLSTM(config.rnn_units, name="rnn")(x)
    else:
        rnn = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[config.rnn]
        x = keras.layers.Bidirectional(rnn(config.rnn_units, return_sequences=True,
                                           unroll=unroll), name="rnn")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    # float32 logits even under a mixed-precision policy: CTC needs them. With a stride, each
    # RNN step writes the logits of its `stride` frames, back in their columns' order.
    logits = keras.layers.Dense(stride * num_classes, dtype="float32", name=OUTPUT_LAYER)(x)
    if stride > 1:
        logits = keras.layers.Reshape((steps, num_classes), dtype="float32")(logits)
    return keras.Model(images, logits, name="crnn")


@keras.saving.register_keras_serializable(package="plate_ocr")
class UnrolledBiLSTM(keras.layers.Layer):
    """Bidirectional(LSTM(units, return_sequences=True)) unrolled for inference: the same
    weights (set_weights takes the Bidirectional layer's six) and outputs, in fewer ops.

    Keras' unrolled LSTM computes each step of each direction apart: two small products and
    ~12 elementwise ops, 128 times for 64 columns; on one plate TFLite spends more on launching
    those ~1,800 ops than on their arithmetic. Here each direction's input products for every
    step are one product before the loop, and each step runs both directions at once: one
    product of [h_forward, h_backward] with a block-diagonal recurrent kernel (half zeros),
    one sigmoid over all four gates (the cell candidate's columns doubled: tanh(x) =
    2 sigmoid(2x) - 1) and five elementwise ops. The rearranged kernels are functions of the
    weights, folded into constants by the TFLite converter. Inference only (no dropout, no
    masks).

    The products are 2-D, which TFLite runs as FULLY_CONNECTED: dynamic-range quantization
    gives those a scale per output column and per input row. The directions as one batched
    product [2, B, .] were faster (the network 0.38 against 0.41 ms a plate) but quantized with
    one scale per tensor, and read 4 points less of the augmented test split
    (docs/experiments.md, "One product a step").
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        features, gates = input_shape[-1], 4 * self.units
        # In Bidirectional(LSTM)'s order: each direction's kernel, recurrent kernel, bias.
        self.directions = [[self.add_weight(shape=shape, name=f"{direction}_{name}")
                            for name, shape in (("kernel", (features, gates)),
                                                ("recurrent_kernel", (self.units, gates)),
                                                ("bias", (gates,)))]
                           for direction in ("forward", "backward")]

    def _interleaved(self, forward, backward):
        """[..., 4u] of each direction -> [..., 8u]: gate by gate (Keras' i, f, c, o), the
        forward units then the backward ones, the cell candidate's doubled."""
        u = self.units
        doubled = tf.constant(np.repeat([1.0, 1.0, 2.0, 1.0], u), forward.dtype)
        forward, backward = forward * doubled, backward * doubled
        shape = tf.concat([tf.shape(forward)[:-1], [4, u]], 0)
        pairs = tf.stack([tf.reshape(forward, shape), tf.reshape(backward, shape)], axis=-2)
        return tf.reshape(pairs, tf.concat([tf.shape(forward)[:-1], [8 * u]], 0))

    def call(self, inputs):
        (kernel, recurrent, bias), (back_kernel, back_recurrent, back_bias) = self.directions
        u, steps = self.units, inputs.shape[1]
        # Step t's gate inputs: the forward direction's from x_t, the backward's from x_(T-1-t).
        gate_inputs = self._interleaved(
            tf.einsum("btf,fg->btg", inputs, kernel) + bias,
            tf.einsum("btf,fg->btg", tf.reverse(inputs, [1]), back_kernel) + back_bias)
        recurrent = tf.concat([self._interleaved(recurrent, tf.zeros_like(back_recurrent)),
                               self._interleaved(tf.zeros_like(recurrent), back_recurrent)],
                              axis=0)  # [h_forward, h_backward] -> both directions' gates
        state = tf.zeros([tf.shape(inputs)[0], 2 * u], inputs.dtype)
        cell, outputs = state, []
        for step in range(steps):
            gates = tf.sigmoid(gate_inputs[:, step] + tf.matmul(state, recurrent))
            input_gate, forget_gate, candidate, output_gate = tf.split(gates, 4, axis=-1)
            cell = forget_gate * cell + input_gate * (2.0 * candidate - 1.0)
            state = output_gate * tf.tanh(cell)
            outputs.append(state)
        outputs = tf.stack(outputs, axis=1)  # [B, T, 2u]: forward at t, backward at T-1-t
        return tf.concat([outputs[..., :u], tf.reverse(outputs[..., u:], [1])], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="plate_ocr")
class Standardize(keras.layers.Layer):
    """Each image [B, H, W, 1] to zero mean and unit standard deviation over its pixels
    (a flat image stays flat: the deviation's floor is 4 grey levels)."""

    def call(self, inputs):
        mean = keras.ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        deviation = keras.ops.sqrt(keras.ops.mean(keras.ops.square(inputs - mean),
                                                  axis=(1, 2, 3), keepdims=True))
        return (inputs - mean) / keras.ops.maximum(deviation, 4.0)


@keras.saving.register_keras_serializable(package="plate_ocr")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, trained through TensorFlow's fused kernel.

    Keras 3 computes a training step's batch statistics and normalization as separate ops;
    on this CPU that made the fast model's training step 20-35% slower than FusedBatchNormV3
    (docs/experiments.md, "Time to accuracy", run Q). Inference, masks and other axes go to
    Keras' code. The moving variance receives the batch variance with Bessel's correction
    n / (n - 1) (what Keras 2 did), n being the batch's pixels: a difference of < 1e-4 here.
    """

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or not (self.center and self.scale) or self.renorm
                or self.synchronized):
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(inputs, tf.float32), self.gamma, self.beta, epsilon=self.epsilon,
            is_training=True)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + batch * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def fold_batch_norm(trained: keras.Model, config: ModelConfig, unroll: bool = False) -> keras.Model:
    """The trained model for inference, each BatchNorm folded into the convolution before it.

    BatchNorm at inference is a per-channel scale and shift, so it can live in the conv's
    kernel and bias: the same logits with four fewer passes over the largest activations.
    """
    height, width = trained.input_shape[1:]
    num_classes = trained.output_shape[-1]
    folded = build_crnn(config, height, width, num_classes, unroll=unroll, folded=True)
    for layer in folded.layers:
        if not layer.weights:
            continue
        source = trained.get_layer(layer.name)
        if layer.name.startswith("conv"):
            norm = trained.get_layer(layer.name.replace("conv", "batch_norm"))
            gamma, beta, mean, variance = norm.get_weights()
            scale = gamma / np.sqrt(variance + norm.epsilon)
            (kernel,) = source.get_weights()
            layer.set_weights([kernel * scale, beta - mean * scale])
        else:
            layer.set_weights(source.get_weights())
    return folded
