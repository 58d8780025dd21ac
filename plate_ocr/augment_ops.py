"""augment.py's photograph-like effects as batched TF ops, for plates rendered in the graph.

The same effects, probabilities and ranges (an AugmentConfig) as the PIL/numpy augmentation
of the records, drawn by stateless random ops so that the result is a pure function of the
plates and a seed: what `--source=render --render_augment` trains on, with new distortions
for each label every time round. Not the same pixels as augment.py (other random streams,
TF's bilinear sampler), the same distribution of plates.
"""

import math

import tensorflow as tf

from plate_ocr import augment as augment_lib

_SCALES = (1.0, 0.5, 0.25)  # a warp that leaves the frame is tried smaller, then dropped


def _ink_box(ink: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """First and last inked row and column of each plate: int32 [B] each."""
    def first_last(present):  # [B, N] bool
        size = tf.shape(present)[1]
        index = tf.range(size)[None, :]
        first = tf.reduce_min(tf.where(present, index, size), axis=1)
        last = tf.reduce_max(tf.where(present, index, -1), axis=1)
        return first, last
    top, bottom = first_last(tf.reduce_any(ink > 0, axis=2))
    left, right = first_last(tf.reduce_any(ink > 0, axis=1))
    return top, bottom, left, right


def _homographies(source: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """The 8 coefficients mapping target points to source points, [B, 4, 2] each -> [B, 8].

    In the form of ImageProjectiveTransformV3: an output pixel (x, y) samples the input at
    ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1.
    """
    x, y = target[..., 0], target[..., 1]
    u, v = source[..., 0], source[..., 1]
    zeros, ones = tf.zeros_like(x), tf.ones_like(x)
    rows_u = tf.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], axis=-1)
    rows_v = tf.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], axis=-1)
    matrix = tf.concat([rows_u, rows_v], axis=1)  # [B, 8, 8]
    vector = tf.concat([u, v], axis=1)[..., None]  # [B, 8, 1]
    return tf.linalg.solve(matrix, vector)[..., 0]


def warp(ink: tf.Tensor, uniform: dict[str, tf.Tensor], jitter: tf.Tensor,
         config: augment_lib.AugmentConfig, margin: int) -> tf.Tensor:
    """Rotation, shear and perspective of each plate's ink box about its centre.

    As warp.warp_inks: a distortion whose box corners would leave the frame (plus a pixel
    for blur) is shrunk to a half, then a quarter, then dropped.

    Args:
      ink: float32 [B, H, W] coverage.
      uniform: the plates' draws, float32 [B] each, by name.
      jitter: float32 [B, 4, 2] uniforms in [-1, 1): the corners' perspective displacement.
      config, margin: the effects' ranges; the ink's distance from the frame.
    Returns:
      float32 [B, H, W].
    """
    height, width = tf.shape(ink)[1], tf.shape(ink)[2]
    size = tf.cast(tf.stack([width, height]), tf.float32)
    margin = tf.cast(margin, tf.float32)
    top, bottom, left, right = (tf.cast(value, tf.float32) for value in _ink_box(ink))
    angle = tf.where(uniform["rotate"] < config.rotate_prob,
                     (2 * uniform["rotate_amount"] - 1) * math.radians(config.rotate_degrees), 0.0)
    shear = tf.where(uniform["shear"] < config.shear_prob,
                     (2 * uniform["shear_amount"] - 1) * config.shear, 0.0)
    # In heights of the ink box, as augment's: the far end keeps 2/3 of the near end's height.
    jitter = tf.where((uniform["perspective"] < config.perspective_prob)[:, None, None],
                      jitter * config.perspective * (bottom + 1 - top)[:, None, None], 0.0)
    # Pixel centres: the box spans left - 0.5 .. right + 0.5.
    corners = tf.stack([tf.stack([left - 0.5, top - 0.5], -1),
                        tf.stack([right + 0.5, top - 0.5], -1),
                        tf.stack([right + 0.5, bottom + 0.5], -1),
                        tf.stack([left - 0.5, bottom + 0.5], -1)], axis=1)  # [B, 4, 2]
    centre = tf.reduce_mean(corners, axis=1, keepdims=True)
    chosen = corners  # no warp: the identity
    undecided = tf.ones_like(angle, tf.bool)
    for scale in _SCALES:
        cos, sin, slant = tf.cos(angle * scale), tf.sin(angle * scale), shear * scale
        # rotate @ shear, applied to the corners relative to the centre.
        linear = tf.stack([tf.stack([cos, cos * slant - sin], -1),
                           tf.stack([sin, sin * slant + cos], -1)], axis=1)  # [B, 2, 2]
        target = (tf.einsum("bij,bkj->bki", linear, corners - centre) + centre
                  + jitter * scale)
        low, high = tf.reduce_min(target, axis=1), tf.reduce_max(target, axis=1)
        fits = ((tf.floor(low[:, 0]) > margin) & (tf.floor(low[:, 1]) > margin)
                & (tf.math.ceil(high[:, 0]) < size[0] - margin - 1)
                & (tf.math.ceil(high[:, 1]) < size[1] - margin - 1))
        take = undecided & fits
        chosen = tf.where(take[:, None, None], target, chosen)
        undecided &= ~fits
    transforms = _homographies(corners, chosen)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=ink[..., None], transforms=transforms, output_shape=tf.stack([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return warped[..., 0]


def _blur(plates: tf.Tensor) -> tf.Tensor:
    """[1, 2, 1] / 4 along both axes, edge pixels repeated (one pass of augment._blur)."""
    padded = tf.pad(plates[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    kernel = tf.constant([1.0, 2.0, 1.0]) / 4
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, [3, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, [1, 3, 1, 1]), 1, "VALID")[..., 0]


def _maybe_blur(plates: tf.Tensor, blur: tf.Tensor, twice: tf.Tensor) -> tf.Tensor:
    """Blurred once, twice or not at all, plate by plate (bool [B, 1, 1] each)."""
    blurred = _blur(plates)
    return tf.where(blur, tf.where(twice, _blur(blurred), blurred), plates)


def _contrast_floor(coverage: tf.Tensor, blurred: tf.Tensor, ink_level: tf.Tensor,
                    min_contrast: float) -> tuple[tf.Tensor, tf.Tensor]:
    """augment._contrast_floor: the ink level [B] and the background's floor [B] that keep
    the strokes min_contrast apart from it after the blur (`blurred`: the coverage blurred)."""
    kept = (tf.reduce_sum(blurred * coverage, axis=[1, 2])
            / tf.maximum(tf.reduce_sum(coverage, axis=[1, 2]), 1e-6))
    need = min_contrast / tf.maximum(kept, 1e-3)
    ink_level = tf.minimum(ink_level, tf.maximum(255 - need, 0.0))
    return ink_level, tf.minimum(ink_level + need, 255.0)


def augment(ink: tf.Tensor, config: augment_lib.AugmentConfig, seed: tf.Tensor,
            margin: int) -> tf.Tensor:
    """Turns a batch of ink coverages (uint8, 255 = ink) into photographed-looking plates.

    Args:
      ink: uint8 [B, H, W], all ink inside the frame's margin.
      config: probabilities and ranges (the records' plate_style.augment).
      seed: int64 [2], the batch's stateless seed.
      margin: pixels the ink keeps from the frame (int or int32 tensor).
    Returns:
      uint8 [B, H, W] grey plates.
    """
    batch, height, width = tf.shape(ink)[0], tf.shape(ink)[1], tf.shape(ink)[2]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    columns = tf.random.stateless_uniform([batch, len(augment_lib.DRAWS)], seed=seeds[0])
    uniform = {name: columns[:, i] for i, name in enumerate(augment_lib.DRAWS)}
    jitter = tf.random.stateless_uniform([batch, 4, 2], seed=seeds[1], minval=-1.0)

    def per_plate(value):  # [B] -> [B, 1, 1]
        return value[:, None, None]

    coverage = warp(tf.cast(ink, tf.float32), uniform, jitter, config, margin)
    # Strokes, as augment._stroke: the 3x3 maximum (minimum) blended half and half with the
    # original, about half a pixel on each side.
    grown = (coverage + tf.nn.max_pool2d(coverage[..., None], 3, 1, "SAME")[..., 0]) / 2
    thinned = (coverage - tf.nn.max_pool2d(-coverage[..., None], 3, 1, "SAME")[..., 0]) / 2
    stroke = per_plate(uniform["stroke"] < config.stroke_prob)
    coverage = tf.where(stroke & per_plate(uniform["stroke_grow"] < 0.5), grown,
                        tf.where(stroke, thinned, coverage)) / 255.0
    contrast = uniform["contrast"] < config.contrast_prob
    background = tf.where(contrast, config.background_min + uniform["background"]
                          * (255 - config.background_min), 255.0)
    ink_level = tf.where(contrast, uniform["ink_level"] * config.ink_max, 0.0)
    plate = tf.broadcast_to(per_plate(background), [batch, height, width])
    direction = 2 * math.pi * uniform["direction"]
    strength = tf.where(uniform["gradient"] < config.gradient_prob,
                        uniform["gradient_amount"] * config.gradient, 0.0)
    across = tf.range(width, dtype=tf.float32) / tf.cast(width, tf.float32) - 0.5
    down = tf.range(height, dtype=tf.float32) / tf.cast(height, tf.float32) - 0.5
    plate += (per_plate(tf.cos(direction) * strength) * across[None, None, :]
              + per_plate(tf.sin(direction) * strength) * down[None, :, None])
    coarse = tf.random.stateless_normal(tf.stack([batch, height // 8, width // 8, 1]),
                                        seed=seeds[2])
    texture = tf.image.resize(coarse, tf.stack([height, width]), method="bilinear")[..., 0]
    plate += texture * per_plate(tf.where(uniform["texture"] < config.texture_prob,
                                          uniform["texture_amount"] * config.texture, 0.0))
    # As augment._shade: the blur acts on the ink's coverage (the shading under it is smooth).
    blur = per_plate(uniform["blur"] < config.blur_prob)
    twice = per_plate(uniform["blur_twice"] < (config.blur_sigma - 0.7) / 0.3)
    blurred = _maybe_blur(coverage, blur, twice)
    ink_level, floor = _contrast_floor(coverage, blurred, ink_level, config.min_contrast)
    plate = tf.maximum(plate, per_plate(floor))
    # The border (ink level, a pixel wide) as more coverage, blurred as the plate's ink.
    frame = tf.pad(tf.zeros(tf.stack([1, height - 2, width - 2])), [[0, 0], [1, 1], [1, 1]],
                   constant_values=1.0)
    frame = _maybe_blur(frame, blur, twice)
    coverage = blurred + tf.where(per_plate(uniform["border"] < config.border_prob), frame, 0.0)
    plate += (per_plate(ink_level) - plate) * coverage
    plate = tf.where(per_plate(uniform["invert"] < config.invert_prob), 255.0 - plate, plate)
    noise = tf.random.stateless_normal(tf.stack([batch, height, width]), seed=seeds[3])
    plate += noise * per_plate(tf.where(uniform["noise"] < config.noise_prob,
                                        uniform["noise_amount"] * config.noise_sigma, 0.0))
    plates = tf.cast(tf.clip_by_value(tf.round(plate), 0, 255), tf.uint8)
    quality = tf.cast(config.jpeg_quality_min + uniform["jpeg_quality"]
                      * (96 - config.jpeg_quality_min), tf.int32)
    jpeg = uniform["jpeg"] < config.jpeg_prob

    def maybe_jpeg(args):
        image, apply, image_quality = args
        return tf.cond(apply, lambda: tf.image.adjust_jpeg_quality(
            image[..., None], image_quality)[..., 0], lambda: image)
    return tf.map_fn(maybe_jpeg, (plates, jpeg, quality), fn_output_signature=tf.uint8)
