"""The CRNN's shapes."""

import pytest

from plate_ocr.training import model

SMALL = model.ModelConfig(conv_filters=(8, 8, 16, 16), dense_units=16, rnn_units=8)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_logits_shape_and_time_steps(rnn):
    import dataclasses
    import numpy as np
    config = dataclasses.replace(SMALL, rnn=rnn)
    crnn = model.build_crnn(config, 64, 128, 11)
    logits = crnn(np.zeros((3, 64, 128), np.float32))
    assert model.time_steps(128, config) == 32 >= 16
    assert tuple(logits.shape) == (3, 32, 11) and logits.dtype == "float32"


def test_stem_halves_both_axes():
    import numpy as np
    config = model.ModelConfig(stem_filters=4, conv_filters=(8, 8, 16), pool_widths=(2, 1, 1),
                               dense_units=16, rnn_units=8)
    crnn = model.build_crnn(config, 64, 128, 11)
    assert model.time_steps(128, config) == 32
    # 64 // 2 (stem) // 2 ** 3 (blocks) = 4 rows of 16 filters per column
    assert tuple(crnn.get_layer("columns").input.shape) == (None, 32, 64)
    assert tuple(crnn(np.zeros((2, 64, 128), np.float32)).shape) == (2, 32, 11)


def test_rnn_stride_halves_the_rnn_steps_and_keeps_a_frame_per_column():
    import keras
    import numpy as np
    config = model.ModelConfig(stem_filters=4, conv_filters=(8, 16), pool_widths=(1, 1),
                               dense_units=16, rnn_units=8, rnn_stride=2)
    crnn = model.build_crnn(config, 64, 128, 11)
    assert model.time_steps(128, config) == 64
    assert tuple(crnn.get_layer("rnn").output.shape) == (None, 32, 16)
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 128)).astype(np.float32)
    logits = np.asarray(crnn(images, training=False))
    assert logits.shape == (3, 64, 11)
    # Step k's 22 outputs are the logits of frames 2k and 2k + 1, in that order.
    rnn_out = np.asarray(keras.Model(crnn.input, crnn.get_layer("rnn").output)(images))
    kernel, bias = crnn.get_layer("logits").get_weights()
    per_step = rnn_out @ kernel + bias  # [3, 32, 22]
    np.testing.assert_allclose(logits[:, 0::2], per_step[..., :11], atol=1e-5)
    np.testing.assert_allclose(logits[:, 1::2], per_step[..., 11:], atol=1e-5)


def test_default_model_is_small():
    crnn = model.build_crnn(model.ModelConfig(), 64, 128, 11)
    assert 200_000 < crnn.count_params() < 1_000_000


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="pool widths"):
        model.build_crnn(model.ModelConfig(conv_filters=(8, 8), pool_widths=(2,)), 64, 128, 11)
    with pytest.raises(ValueError, match="no rows"):
        model.build_crnn(model.ModelConfig(conv_filters=(8,) * 7, pool_widths=(1,) * 7),
                         64, 128, 11)
    with pytest.raises(ValueError, match="does not divide"):
        model.build_crnn(model.ModelConfig(rnn_stride=3), 64, 128, 11)  # 32 steps


@pytest.mark.parametrize("config", [SMALL, model.ModelConfig(
    stem_filters=4, conv_filters=(8, 16), pool_widths=(2, 1), dense_units=16, rnn_units=8),
    model.ModelConfig(stem_filters=4, conv_filters=(8, 16), pool_widths=(1, 1), dense_units=16,
                      rnn_units=8, rnn_stride=2)],
    ids=["blocks", "stem", "rnn_stride"])
@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
def test_folding_batch_norm_keeps_the_logits(config, unroll):
    import numpy as np
    trained = model.build_crnn(config, 64, 128, 11)
    # Give BatchNorm statistics that are not the identity, as training would.
    rng = np.random.default_rng(0)
    for layer in trained.layers:
        if layer.name.startswith("batch_norm"):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(size=beta.shape),
                               rng.normal(size=mean.shape), rng.uniform(0.5, 2, variance.shape)])
        elif layer.name == "rnn":  # weights of a trained size, not the initial ones
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    folded = model.fold_batch_norm(trained, config, unroll=unroll)
    assert not [l for l in folded.layers if "batch_norm" in l.name]
    # Unrolled, an LSTM is the one-product-a-step layer, with the trained weights.
    assert isinstance(folded.get_layer("rnn"), model.UnrolledBiLSTM) == unroll
    images = rng.uniform(0, 255, (4, 64, 128)).astype(np.float32)
    np.testing.assert_allclose(folded(images), trained(images, training=False), atol=1e-4)


def test_an_unrolled_gru_stays_keras_bidirectional_gru():
    import keras
    import numpy as np
    import dataclasses
    config = dataclasses.replace(SMALL, rnn="gru")
    trained = model.build_crnn(config, 64, 128, 11)
    folded = model.fold_batch_norm(trained, config, unroll=True)
    assert isinstance(folded.get_layer("rnn"), keras.layers.Bidirectional)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 128)).astype(np.float32)
    np.testing.assert_allclose(folded(images), trained(images, training=False), atol=1e-4)


def test_fused_batch_norm_trains_as_keras_batch_norm():
    import keras
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (16, 8, 32, 5)), tf.float32)  # n = 4,096
    upstream = tf.constant(rng.normal(size=x.shape), tf.float32)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    results = []
    for layer in (keras.layers.BatchNormalization(momentum=0.9),
                  model.FusedBatchNorm(momentum=0.9)):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([layer(x, training=True), *grads, layer.moving_mean,
                        layer.moving_variance, layer(x, training=False)])
    # The moving variances differ by Bessel's n / (n - 1) only.
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(fused_value, keras_value, rtol=2e-3, atol=2e-4)
