"""Domain randomization: clean plates' ink turned into plates as cameras and software show them.

One implementation, in batched TF ops, serves the records' augmented splits (the writer runs it
over its chunks) and the training stream (`--source=render --render_augment`, in the graph).
Every draw comes from the plate's own stateless key, so a plate is a pure function of
(its ink, its key): the same pixels whichever batch it is in, in whichever process.

The effects, each with a probability and a range (AugmentConfig), in the order applied:
- each character of the clean ink turned, resized and moved its own way (captcha-like);
- an elastic bend of the clean ink (a smooth random displacement): glyph shapes no font has;
- geometry of the ink box: scale (small and large text), horizontal stretch (condensed and
  wide faces), rotation, shear, perspective, and a new position anywhere it fits; the whole
  distortion shrinks until the box fits in the frame, so every glyph's ink stays inside it;
- the edges of text scaled up made as crisp as those of text drawn at that size;
- strokes a little thicker or thinner (thinner still on text scaled up: large hairline faces),
  worn (holes in the ink);
- the plate as a box around the text on a page of another grey (its edges visible), a border
  line inside it, screws at its ends, a dark strip at its left end, clutter on the page,
  speckle (dots of ink) and a scratch (a thin wavy line across the text);
- grey levels of ink, box and page, light digits on a dark box, gradient, texture, a pattern
  of interfering waves;
- Gaussian and horizontal motion blur, downscale-then-upscale (1/2 or 1/3), sensor noise, JPEG.
The ink keeps min_contrast grey levels from the box under it, as the blur leaves its strokes
(the contrast floor), so that every augmented plate stays legible.
"""

import functools
import math
import zlib

import numpy as np
import tensorflow as tf

from plate_ocr.data.augment_config import NO_CHARACTER, AugmentConfig


# One uniform per plate for each of these, drawn from the plate's key in one call.
DRAWS = ("scale", "scale_amount", "squeeze", "stretch", "stretch_amount", "rotate",
         "rotate_amount", "shear", "shear_amount", "perspective", "position", "x", "y", "stroke",
         "stroke_grow", "box", "pad_left", "pad_right", "pad_top", "pad_bottom", "contrast",
         "background",
         "ink_level", "page", "gradient", "direction", "gradient_amount", "texture",
         "texture_amount", "border", "border_width", "border_inset", "screws", "screw_radius",
         "strip", "strip_width", "clutter", "clutter_x", "clutter_y", "clutter_w",
         "clutter_h", "clutter_level", "invert", "blur", "blur_amount", "motion",
         "motion_amount", "resample", "resample_amount", "noise", "noise_top", "noise_left",
         "noise_amount", "texture_top", "texture_left", "jpeg", "jpeg_quality", "elastic",
         "elastic_amount", "elastic_x_top", "elastic_x_left", "elastic_y_top", "elastic_y_left",
         "speckle", "speckle_amount", "speckle_top", "speckle_left", "speckle_grow", "scratch",
         "scratch_y", "scratch_slope", "scratch_wave", "scratch_period", "scratch_phase",
         "scratch_width", "pattern", "pattern_amount", "wear", "wear_amount", "wear_top",
         "wear_left", "sharpen")
_WAVES = 4  # the pattern's plane waves, each of a direction, frequency and phase
DRAWS += tuple(f"wave_{what}_{i}" for i in range(_WAVES) for what in ("angle", "freq", "phase"))
_JITTER = 8  # the perspective's corner displacements, after the DRAWS
_GLYPHS = 6  # runs of inked columns moved each its own way; any further runs join the last
# After the jitter (a stateless draw's first values do not depend on how many follow, so the
# plates of a config without this effect keep their pixels).
GLYPH_DRAWS = ("glyph",) + tuple(f"glyph_{what}_{i}" for i in range(_GLYPHS)
                                 for what in ("angle", "size", "x", "y"))
_ELASTIC_CELL = 6  # pixels between the elastic displacement's independent nodes
_ELASTIC_TAPER = 12  # pixels from the frame's edge over which the displacement fades out
_BANK_SEED = 20261202  # the noise banks: the same in every process
# Sharpening steepens coverage about 40% of full ink, not half: a hairline whose coverage
# peaks under half stays.
_SHARPEN_PIVOT = 102.0


def plate_keys(seed: int, split: str, indices) -> tf.Tensor:
    """The stateless keys of plates `indices` of a split: int64 [B, 2].

    The split enters by its CRC (stable across processes, unlike hash()); Philox gives each
    (key, counter) pair its own stream.
    """
    indices = tf.cast(tf.convert_to_tensor(indices), tf.int64)
    stream = tf.constant(seed * 2 ** 32 + zlib.crc32(split.encode()), tf.int64)
    return tf.stack([tf.fill(tf.shape(indices), stream), indices], axis=1)


def _uniforms(keys: tf.Tensor, count: int) -> tf.Tensor:
    """float32 [B, count] uniforms in [0, 1), row b from keys[b] alone."""
    # (Reshaped: map_fn over no plates, eagerly, gives no shape.)
    return tf.reshape(tf.map_fn(lambda key: tf.random.stateless_uniform([count], seed=key),
                                keys, fn_output_signature=tf.float32), [-1, count])


@functools.cache
def _bank(height: int, width: int) -> np.ndarray:
    """Standard normal noise twice the size each way, the same in every process."""
    return np.random.default_rng(_BANK_SEED).standard_normal((2 * height, 2 * width),
                                                             dtype=np.float32)


def _bank_windows(shape: tuple[int, int], top: tf.Tensor, left: tf.Tensor) -> tf.Tensor:
    """Windows [B, h, w] of a fixed standard-normal bank twice the size, at fractions
    top, left [B] of its free room: per-plate noise without per-pixel draws."""
    height, width = shape
    bank = tf.constant(_bank(height, width))
    corners = tf.stack([tf.cast(top * height, tf.int32), tf.cast(left * width, tf.int32)], 1)
    # A slice per plate: six times cheaper here than gathering the windows' rows and columns.
    return tf.reshape(tf.map_fn(lambda corner: tf.slice(bank, corner, [height, width]),
                                corners, fn_output_signature=tf.float32), [-1, height, width])


def _smooth_field(nodes: tuple[int, int], size: tuple[int, int], top: tf.Tensor,
                  left: tf.Tensor) -> tf.Tensor:
    """A window [B, *nodes] of the noise bank (_bank_windows) interpolated bilinearly to
    [B, *size]: smooth per-plate noise (texture, the elastic bend, wear)."""
    coarse = _bank_windows(nodes, top, left)
    return tf.image.resize(coarse[..., None], size, method="bilinear")[..., 0]


def _max3x3(plates: tf.Tensor) -> tf.Tensor:
    """The 3x3 maximum of each pixel of [B, H, W] (edges repeated), as shifted maxima: five
    times faster here than max_pool2d."""
    rows = tf.pad(plates, [[0, 0], [1, 1], [0, 0]], mode="SYMMETRIC")
    rows = tf.maximum(tf.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
    columns = tf.pad(rows, [[0, 0], [0, 0], [1, 1]], mode="SYMMETRIC")
    return tf.maximum(tf.maximum(columns[:, :, :-2], columns[:, :, 1:-1]), columns[:, :, 2:])


def _whole_vectors(function, values: tf.Tensor) -> tf.Tensor:
    """function (exp, cos...) of per-plate values [B, ...], computed on a batch padded to a
    multiple of 16: Eigen's vectorized transcendentals round differently from the scalar
    code it runs on a short tail, which made a plate's bits depend on its batch."""
    batch = tf.shape(values)[0]
    padding = [[0, -batch % 16]] + [[0, 0]] * (len(values.shape) - 1)
    return function(tf.pad(values, padding))[:batch]


def on_chosen(chosen: tf.Tensor, function, images: tf.Tensor, *values: tf.Tensor):
    """function(images[i], values[i]...) computed on the plates where chosen [B] holds only,
    the others left as they are: an effect costs its plates alone. Each plate's result is its
    own computation (elementwise, per image), so its bits do not depend on which plates are
    computed with it. function returns one tensor like `images`, or a tuple of such; so does
    this (with `images` in place of every output for the plates not chosen)."""
    index = tf.where(chosen)[:, 0]
    done = function(tf.gather(images, index), *(tf.gather(value, index) for value in values))
    if isinstance(done, tuple):
        return tuple(tf.tensor_scatter_nd_update(images, index[:, None], d) for d in done)
    return tf.tensor_scatter_nd_update(images, index[:, None], done)


def _bilinear_warp(images: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Each pixel (x, y) of [B, H, W] float32 images sampled at (x + dx, y + dy), bilinearly,
    edges repeated: elementwise arithmetic and a gather, the same bits in any batch."""
    height, width = images.shape[1], images.shape[2]
    ys = tf.clip_by_value(tf.range(height, dtype=tf.float32)[None, :, None] + dy, 0.0,
                          height - 1.0)
    xs = tf.clip_by_value(tf.range(width, dtype=tf.float32)[None, None, :] + dx, 0.0,
                          width - 1.0)
    y0, x0 = tf.floor(ys), tf.floor(xs)
    fy, fx = ys - y0, xs - x0
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, height - 1), tf.minimum(x0 + 1, width - 1)
    flat = tf.reshape(images, [-1, height * width])

    def at(y, x):
        return tf.reshape(tf.gather(flat, tf.reshape(y * width + x, [-1, height * width]),
                                    batch_dims=1), [-1, height, width])
    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx
    return top + (bottom - top) * fy


def _elastic(ink: tf.Tensor, u: dict, config: AugmentConfig) -> tf.Tensor:
    """The clean ink [B, H, W] uint8 under a smooth random displacement, on the plates drawn
    for it: nodes every _ELASTIC_CELL pixels drawn from the noise bank, interpolated, faded to
    zero at the frame's edges (the edges map onto themselves, so no ink leaves the frame)."""
    height, width = ink.shape[1], ink.shape[2]
    nodes = (-(-height // _ELASTIC_CELL) + 1, -(-width // _ELASTIC_CELL) + 1)
    ys = tf.range(height, dtype=tf.float32)
    xs = tf.range(width, dtype=tf.float32)
    fade_y = tf.minimum(tf.minimum(ys, height - 1 - ys) / _ELASTIC_TAPER, 1.0)[None, :, None]
    fade_x = tf.minimum(tf.minimum(xs, width - 1 - xs) / _ELASTIC_TAPER, 1.0)[None, None, :]
    sigma = u["elastic_amount"] * config.elastic
    fields = tf.stack([u[name] for name in ("elastic_x_top", "elastic_x_left", "elastic_y_top",
                                            "elastic_y_left")], axis=1)  # [B, 4]

    def bend(ink, sigma, fields):
        sigma = sigma[:, None, None]
        dx = (_smooth_field(nodes, (height, width), fields[:, 0], fields[:, 1]) * sigma
              * fade_x * fade_y)
        dy = (_smooth_field(nodes, (height, width), fields[:, 2], fields[:, 3]) * sigma
              * fade_x * fade_y)
        warped = _bilinear_warp(tf.cast(ink, tf.float32), dx, dy)
        return tf.cast(tf.round(warped), tf.uint8)
    # (A plate drawn with no displacement rounds back to its own ink.)
    return on_chosen(u["elastic"] < config.elastic_prob, bend, ink, sigma, fields)


def _glyph_jitter(ink: tf.Tensor, u: dict, config: AugmentConfig, margin, ways) -> tf.Tensor:
    """Each character of the clean ink [B, H, W] uint8 turned, resized and moved its own way,
    on the plates drawn for it (the others are not computed: the effect costs a warp per
    character). ways: int32 [B, L] or None, as augment_with_ink's."""
    draws = tf.stack([u[name] for name in GLYPH_DRAWS], axis=1)  # [B, len(GLYPH_DRAWS)]

    def jitter(ink, draws, *ways):
        return _jitter_runs(ink, dict(zip(GLYPH_DRAWS, tf.unstack(draws, axis=1))), config,
                            margin, ways[0] if ways else None)
    return on_chosen(u["glyph"] < config.glyph_prob, jitter, ink, draws,
                     *(() if ways is None else (ways,)))


def _jitter_runs(ink: tf.Tensor, u: dict, config: AugmentConfig, margin, ways) -> tf.Tensor:
    """_glyph_jitter on every plate of ink [B, H, W] uint8.

    The characters are the runs of inked columns (two that touch move as one). Each is
    mapped by its own similarity about its centre; the line of them is then shrunk about its
    middle, if it must be, and moved as little as it must, to keep `margin` pixels from the
    frame: every glyph's ink stays inside. Overlapping characters keep the darker ink.
    The k-th run is the label's k-th character when there are as many runs as characters;
    its turn then follows `ways` (int32 [B, L], as augment_with_ink's). On a plate with other
    runs (characters that touch) nothing is turned if any character is one-way.
    """
    height, width = ink.shape[1], ink.shape[2]
    inked_columns = tf.reduce_any(ink > 0, axis=1)  # [B, W]
    starts = inked_columns & ~tf.pad(inked_columns[:, :-1], [[0, 0], [1, 0]])
    run = tf.minimum(tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, _GLYPHS - 1)
    member = inked_columns[:, None, :] & (run[:, None, :] == tf.range(_GLYPHS)[None, :, None])
    left, right = _first_last(member)  # [B, K]
    top, bottom = _first_last(tf.reduce_any((ink[:, None] > 0) & member[:, :, None, :], axis=3))
    present = tf.reduce_any(member, axis=2)  # [B, K]
    text_height = (tf.reduce_max(tf.where(present, bottom, -1.0), axis=1)
                   - tf.reduce_min(tf.where(present, top, float(height)), axis=1) + 1)

    def each(what):  # [B, K] uniforms in [-1, 1)
        return tf.stack([2 * u[f"glyph_{what}_{i}"] - 1 for i in range(_GLYPHS)], axis=1)
    angle = each("angle")
    if ways is not None:
        characters = tf.reduce_sum(tf.cast(ways != NO_CHARACTER, tf.int32), axis=1)
        ways = tf.where(ways == NO_CHARACTER, 0, ways)
        # [B, K]: the ways of the label's first K characters, 0 past its end
        run_ways = tf.cast(tf.pad(ways, [[0, 0], [0, _GLYPHS]])[:, :_GLYPHS], tf.float32)
        matched = tf.reduce_sum(tf.cast(present, tf.int32), axis=1) == characters
        angle = tf.where(run_ways == 0, angle, tf.abs(angle) * run_ways)
        # A positive angle turns clockwise as the plate is seen (y down).
        turned = matched | tf.reduce_all(ways == 0, axis=1)
        angle = tf.where(turned[:, None], angle, 0.0)
    angle = angle * math.radians(config.glyph_rotate_degrees)
    size = _whole_vectors(tf.exp, each("size") * math.log(1 + config.glyph_scale))
    centre = tf.stack([(left + right) / 2, (top + bottom) / 2], axis=-1)  # [B, K, 2]
    moved = centre + tf.stack([each("x") * config.glyph_shift * (right + 1 - left),
                               each("y") * config.glyph_shift * text_height[:, None]], axis=-1)
    cos = _whole_vectors(tf.cos, angle) * size
    sin = _whole_vectors(tf.sin, angle) * size
    # Each run's box through its own map (elementwise: the same bits in any batch).
    boxes = tf.transpose(_box_corners(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5),
                         [0, 2, 1, 3])  # [B, K, 4, 2]
    relative = boxes - centre[:, :, None]
    corners = moved[:, :, None] + tf.stack(
        [cos[..., None] * relative[..., 0] - sin[..., None] * relative[..., 1],
         sin[..., None] * relative[..., 0] + cos[..., None] * relative[..., 1]], axis=-1)
    shown = present[:, :, None, None]
    low = tf.reduce_min(tf.where(shown, corners, 1e6), axis=[1, 2])  # [B, 2]
    high = tf.reduce_max(tf.where(shown, corners, -1e6), axis=[1, 2])
    first = tf.cast(margin, tf.float32) - 0.5
    room = tf.stack([width - 2 * first - 1, height - 2 * first - 1])
    fit = tf.minimum(1.0, tf.reduce_min(room / tf.maximum(high - low, 1.0), axis=1))[:, None]
    half = fit * (high - low) / 2
    middle = tf.clip_by_value((low + high) / 2, first + half, first + room - half)
    # Output point q = fit * (size R (p - centre) + moved - (low + high) / 2) + middle; the
    # transform wants p from q: p = centre + R^-1 (q - offset) / (fit size).
    offset = (fit[:, None] * (moved - (low + high)[:, None] / 2) + middle[:, None])  # [B, K, 2]
    scale = fit * tf.square(size)  # (fit size)^2: R^-1 / (fit size) = [[c, s], [-s, c]] / that
    a0, a1 = cos / scale, sin / scale
    b0, b1 = -sin / scale, cos / scale
    ox, oy = offset[..., 0], offset[..., 1]
    transforms = tf.stack([a0, a1, centre[..., 0] - a0 * ox - a1 * oy,
                           b0, b1, centre[..., 1] - b0 * ox - b1 * oy,
                           tf.zeros_like(a0), tf.zeros_like(a0)], axis=-1)  # [B, K, 8]
    runs = tf.cast(ink[:, None], tf.float32) * tf.cast(member[:, :, None, :], tf.float32)
    warped = _transform(tf.reshape(runs, [-1, height, width]), tf.reshape(transforms, [-1, 8]))
    jittered = tf.reduce_max(tf.reshape(warped, [-1, _GLYPHS, height, width]), axis=1)
    return tf.cast(tf.clip_by_value(tf.round(jittered), 0, 255), tf.uint8)


def _first_last(present: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first and last True along the last axis of `present` [..., N], as float32 [...]
    (N and -1 where there is none)."""
    size = tf.shape(present)[-1]
    index = tf.range(size)
    first = tf.reduce_min(tf.where(present, index, size), axis=-1)
    last = tf.reduce_max(tf.where(present, index, -1), axis=-1)
    return tf.cast(first, tf.float32), tf.cast(last, tf.float32)


def _ink_box(ink: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """First and last inked row and column of each plate, as float32 [B] each."""
    top, bottom = _first_last(tf.reduce_any(ink > 0, axis=2))
    left, right = _first_last(tf.reduce_any(ink > 0, axis=1))
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


def _apply(transform: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """Points [B, N, 2] through homographies [B, 8] (the ImageProjectiveTransform form)."""
    a = transform[:, None, :]
    x, y = points[..., 0], points[..., 1]
    k = a[..., 6] * x + a[..., 7] * y + 1
    return tf.stack([(a[..., 0] * x + a[..., 1] * y + a[..., 2]) / k,
                     (a[..., 3] * x + a[..., 4] * y + a[..., 5]) / k], axis=-1)


def _box_corners(left, top, right, bottom) -> tf.Tensor:
    """[B, 4, 2] corners, clockwise on screen from the top left."""
    return tf.stack([tf.stack([left, top], -1), tf.stack([right, top], -1),
                     tf.stack([right, bottom], -1), tf.stack([left, bottom], -1)], axis=1)


def _depth_inside(corners: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Each pixel centre's distance inside a convex quadrilateral [B, 4, 2] (negative
    outside): float32 [B, H, W]."""
    start, end = corners, tf.roll(corners, -1, axis=1)
    edge = end - start
    length = tf.norm(edge, axis=-1) + 1e-6
    # Clockwise on screen (y down): the inside is to the right of each edge.
    normal = tf.stack([-edge[..., 1], edge[..., 0]], axis=-1) / length[..., None]
    ys = tf.range(height, dtype=tf.float32)[:, None]
    xs = tf.range(width, dtype=tf.float32)[None, :]
    distance = ((xs[None, None] - start[..., 0, None, None]) * normal[..., 0, None, None]
                + (ys[None, None] - start[..., 1, None, None]) * normal[..., 1, None, None])
    return tf.reduce_min(distance, axis=1)


def _transform(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "CONSTANT"):
    """ImageProjectiveTransformV3 of [B, H, W] float32 images."""
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None], transforms=transforms, output_shape=shape[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode)[..., 0]


def _geometry(ink: tf.Tensor, box: tuple, u: dict, jitter: tf.Tensor,
              config: AugmentConfig, margin: int):
    """The warped ink and where its box went (box: _ink_box(ink)).

    Returns:
      (coverage float32 [B, H, W] 0..255, the ink box's warped corners [B, 4, 2], the
      forward homography [B, 8] from clean-plate to augmented-plate coordinates, the scale
      from clean to augmented pixels [B]).
    """
    height, width = ink.shape[1], ink.shape[2]
    top, bottom, left, right = box
    corners = _box_corners(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)
    centre = tf.reduce_mean(corners, axis=1, keepdims=True)
    box_height = bottom + 1 - top
    log_scale = math.log(config.scale_min) + u["scale_amount"] * math.log(
        config.scale_max / config.scale_min)
    scale = tf.where(u["scale"] < config.scale_prob, _whole_vectors(tf.exp, log_scale), 1.0)
    stretch = tf.where(u["stretch"] < config.stretch_prob,
                       _whole_vectors(tf.exp, math.log(1 + config.stretch)
                                      * (2 * u["stretch_amount"] - 1)), 1.0)
    angle = tf.where(u["rotate"] < config.rotate_prob,
                     (2 * u["rotate_amount"] - 1) * math.radians(config.rotate_degrees), 0.0)
    shear = tf.where(u["shear"] < config.shear_prob,
                     (2 * u["shear_amount"] - 1) * config.shear, 0.0)
    cos, sin = _whole_vectors(tf.cos, angle), _whole_vectors(tf.sin, angle)
    # rotate @ shear @ diag(stretch, 1), times the scale.
    linear = scale[:, None, None] * tf.stack(
        [tf.stack([cos * stretch, cos * shear - sin], -1),
         tf.stack([sin * stretch, sin * shear + cos], -1)], axis=1)  # [B, 2, 2]
    # In heights of the ink box, as its size before the scale: the far end keeps 2/3.
    jitter = tf.where((u["perspective"] < config.perspective_prob)[:, None, None],
                      jitter * config.perspective * box_height[:, None, None], 0.0)
    # Elementwise, not a batched matmul: its blocking, and so its rounding, follows the batch.
    relative = corners - centre
    target = (linear[:, None, :, 0] * relative[..., 0:1]
              + linear[:, None, :, 1] * relative[..., 1:2] + jitter * scale[:, None, None])
    low, high = tf.reduce_min(target, axis=1), tf.reduce_max(target, axis=1)  # [B, 2]
    # The frame less the margin: the distortion shrinks until the box fits. Text too wide for
    # the frame is condensed first, to 0.7 of its width at most, on half the plates: tall,
    # narrow digits, as tight crops of condensed plate faces show them.
    margin = tf.cast(margin, tf.float32)
    room = tf.stack([width - 2 * margin, height - 2 * margin])
    too_wide = room[0] / tf.maximum(high[:, 0] - low[:, 0], 1.0)
    squeeze = tf.where((u["squeeze"] < config.squeeze_prob) & (too_wide < 1),
                       tf.maximum(too_wide, 0.7), 1.0)
    target *= tf.stack([squeeze, tf.ones_like(squeeze)], axis=1)[:, None, :]
    low, high = tf.reduce_min(target, axis=1), tf.reduce_max(target, axis=1)
    fit = tf.minimum(1.0, tf.reduce_min(room / tf.maximum(high - low, 1.0), axis=1))
    target *= fit[:, None, None]
    low, high = low * fit[:, None], high * fit[:, None]
    free = room - (high - low)
    # The box's first pixel edge: anywhere it fits, or where it was, moved only as far as
    # it must to fit.
    first = margin - 0.5
    anywhere = first + tf.stack([u["x"], u["y"]], axis=1) * free
    kept = tf.clip_by_value(centre[:, 0, :] + low, first, first + free)
    start = tf.where((u["position"] < config.position_prob)[:, None], anywhere, kept)
    target += (start - low)[:, None, :]
    backward = _homographies(corners, target)
    coverage = _transform(tf.cast(ink, tf.float32), backward)
    return coverage, target, _homographies(target, corners), scale * fit


_LANES = 16  # the blur's channels come in whole vectors of this many floats


def _separable_blur(plates: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """Each plate [B, H, W] convolved with its own vertical [B, k] and horizontal [B, k]
    kernels (odd k), edges repeated: the batch laid along the channels of one depthwise conv,
    padded to whole vectors of channels, so that every plate takes the same code path in any
    batch."""
    batch = tf.shape(plates)[0]
    padding = -batch % _LANES
    radius = rows.shape[1] // 2
    images = tf.transpose(plates, [1, 2, 0])[None]  # [1, H, W, B]
    images = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                    mode="SYMMETRIC")
    images = tf.pad(images, [[0, 0], [0, 0], [0, 0], [0, padding]])
    vertical = tf.pad(tf.transpose(rows), [[0, 0], [0, padding]])[:, None, :, None]
    horizontal = tf.pad(tf.transpose(columns), [[0, 0], [0, padding]])[None, :, :, None]
    images = tf.nn.depthwise_conv2d(images, vertical, [1, 1, 1, 1], "VALID")
    images = tf.nn.depthwise_conv2d(images, horizontal, [1, 1, 1, 1], "VALID")
    return tf.transpose(images[0, :, :, :batch], [2, 0, 1])


_BLUR_RADIUS = 4


def _blur_kernels(u: dict, config: AugmentConfig,
                  text_height: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Each plate's vertical and horizontal kernels [B, 2 * _BLUR_RADIUS + 1]: a Gaussian
    (or the identity), the horizontal one convolved with a motion box. Both are bounded by
    the text's height in pixels [B] (full strength from 16 px): small text stays legible."""
    taps = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)[None, :]
    legible = tf.minimum(text_height / 16, 1.0)
    sigma = 0.4 + u["blur_amount"] * (config.blur_sigma - 0.4) * legible
    gaussian = _whole_vectors(tf.exp, -0.5 * tf.square(taps / sigma[:, None]))
    identity = tf.cast(tf.equal(taps, 0.0), tf.float32)
    gaussian = tf.where((u["blur"] < config.blur_prob)[:, None], gaussian, identity)
    gaussian /= tf.reduce_sum(gaussian, axis=1, keepdims=True)
    # A box of `length` pixels (anti-aliased at its ends), then the Gaussian along it:
    # both are short, so the box is applied as a sampled kernel of the same taps.
    length = tf.where(u["motion"] < config.motion_prob,
                      1.0 + u["motion_amount"] * (config.motion - 1.0) * legible, 1.0)
    box = tf.clip_by_value(length[:, None] / 2 + 0.5 - tf.abs(taps), 0.0, 1.0)
    box /= tf.reduce_sum(box, axis=1, keepdims=True)
    # Full convolution of the two, cut back to the taps (the box is at most 2 * radius wide).
    padded = tf.pad(gaussian, [[0, 0], [_BLUR_RADIUS, _BLUR_RADIUS]])
    windows = tf.stack([padded[:, i:i + 2 * _BLUR_RADIUS + 1]
                        for i in range(2 * _BLUR_RADIUS + 1)], axis=1)  # [B, k, k]
    horizontal = tf.reduce_sum(windows * tf.reverse(box, axis=[1])[:, None, :], axis=2)
    return gaussian, horizontal / tf.reduce_sum(horizontal, axis=1, keepdims=True)


def _resample(plates: tf.Tensor, u: dict, config: AugmentConfig, text_height: tf.Tensor,
              height: int, width: int) -> tf.Tensor:
    """Averaged over 2x2 or 3x3 blocks and scaled back bilinearly, on the plates drawn for it:
    a low-resolution crop, whose text keeps 8 pixels of height or more (3x3 from 24 px of
    text, 2x2 from 16)."""
    def coarser(plates, thirds_fit):
        images = plates[..., None]
        halved = tf.image.resize(tf.nn.avg_pool2d(images, 2, 2, "SAME"), [height, width])
        thirds = tf.image.resize(tf.nn.avg_pool2d(images, 3, 3, "SAME"), [height, width])
        return tf.where(thirds_fit[:, None, None, None], thirds, halved)[..., 0]
    thirds_fit = (u["resample_amount"] >= 0.5) & (text_height >= 24)
    apply = (u["resample"] < config.resample_prob) & (text_height >= 16)
    return on_chosen(apply, coarser, plates, thirds_fit)


def _levels(u: dict, config: AugmentConfig):
    """The ink's, the box's and the page's grey levels [B], in the plate's polarity before
    any inversion (so the contrast floor reads them one way)."""
    contrast = u["contrast"] < config.contrast_prob
    background = tf.where(contrast, config.background_min + u["background"]
                          * (255 - config.background_min), 255.0)
    ink_level = tf.where(contrast, u["ink_level"] * config.ink_max, 0.0)
    invert = u["invert"] < config.invert_prob
    # The page as it will be seen, 40 levels or more from the box as it will be seen.
    seen_box = tf.where(invert, 255 - background, background)
    page = u["page"] * 255
    close = tf.abs(page - seen_box) < 40
    page = tf.where(close, tf.where(seen_box >= 128, seen_box - 40 - u["page"] * (seen_box - 40),
                                    seen_box + 40 + u["page"] * (215 - seen_box)), page)
    page = tf.where(invert, 255 - page, page)
    return ink_level, background, page, invert


def augment_with_ink(ink: tf.Tensor, config: AugmentConfig, keys: tf.Tensor,
                     margin: int, ways: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Turns a batch of ink coverages into plates as other cameras and software show them.

    Args:
      ink: uint8 [B, H, W] (static H, W), 255 = ink, all ink inside the frame's margin.
      config: probabilities and ranges (the records' plate_style.augment).
      keys: int64 [B, 2] each plate's stateless key (plate_keys).
      margin: pixels the ink keeps from the frame (int or int32 scalar).
      ways: int32 [B, L], how each character of the label may be turned on its own
        (config.turn_ways of the alphabet, gathered by the labels): 1 clockwise only, -1
        anticlockwise only, 0 either way, NO_CHARACTER past the end of a shorter label;
        None: every character either way.
    Returns:
      (uint8 [B, H, W] plates, uint8 [B, H, W] the warped ink as a clean dark-on-white plate:
      where its characters went, for align.frame_targets).
    """
    height, width = ink.shape[1], ink.shape[2]
    columns = _uniforms(keys, len(DRAWS) + _JITTER + len(GLYPH_DRAWS))
    u = {name: columns[:, i] for i, name in enumerate(DRAWS)}
    jitter = tf.reshape(2 * columns[:, len(DRAWS):len(DRAWS) + _JITTER] - 1, [-1, 4, 2])
    u.update((name, columns[:, len(DRAWS) + _JITTER + i]) for i, name in enumerate(GLYPH_DRAWS))

    def per_plate(value):  # [B] -> [B, 1, 1]
        return value[:, None, None]

    if config.glyph_prob > 0:  # off: not computed
        ink = _glyph_jitter(ink, u, config, margin, ways)
    ink = _elastic(ink, u, config)
    top, bottom, left, right = box = _ink_box(ink)
    coverage, text_corners, forward, scale = _geometry(ink, box, u, jitter, config, margin)
    steepness = tf.where(u["sharpen"] < config.sharpen_prob, tf.maximum(scale, 1.0), 1.0)
    coverage = tf.clip_by_value(_SHARPEN_PIVOT + (coverage - _SHARPEN_PIVOT)
                                * per_plate(steepness), 0.0, 255.0)
    # Strokes: the 3x3 maximum (minimum) blended half and half with the original, about
    # half a pixel on each side. Text scaled up thins by one more such step from 1.7x and two
    # from 2.4x: large hairline faces, whose strokes do not grow with the text.
    # Computed on the plates drawn for it only.
    def restroke(coverage, scale, grow):
        grown = (coverage + _max3x3(coverage)) / 2
        thinned = coverage
        for step in range(3):
            thinner = (thinned - _max3x3(-thinned)) / 2
            thinned = tf.where(per_plate(scale >= (0.0, 1.7, 2.4)[step]), thinner, thinned)
        return tf.where(per_plate(grow), grown, thinned)
    coverage = on_chosen(u["stroke"] < config.stroke_prob, restroke, coverage, scale,
                         u["stroke_grow"] < 0.5) / 255.0
    clean_ink = tf.where(coverage > 0.2, tf.constant(0, tf.uint8), tf.constant(255, tf.uint8))
    # Wear: holes in the ink where a smooth field (blobs of ~4-8 px) runs high, taking 2-17%
    # of most plates' ink (a third at most): worn paint, distressed faces. The frame targets
    # keep the whole characters.
    # Off by default: not computed then (its factor would be 1 everywhere).
    if config.wear_prob > 0:
        blobs = _smooth_field((height // 4, width // 4), (height, width), u["wear_top"],
                              u["wear_left"])
        holes = tf.clip_by_value(4 * (blobs - per_plate(0.3 + 0.8 * u["wear_amount"])), 0.0,
                                 1.0)
        coverage *= 1 - tf.where(per_plate(u["wear"] < config.wear_prob), holes, 0.0)

    # The box: the text's box padded (in text heights) and warped with it; or the image.
    text_height = bottom + 1 - top
    pads = [config.box_pad_min + u[f"pad_{side}"] * (config.box_pad_max - config.box_pad_min)
            for side in ("left", "right", "top", "bottom")]
    pads = [pad * text_height for pad in pads]
    box_source = _box_corners(left - 0.5 - pads[0], top - 0.5 - pads[2],
                              right + 0.5 + pads[1], bottom + 0.5 + pads[3])
    boxed = u["box"] < config.box_prob
    edge = tf.zeros_like(left) - 0.5
    frame = _box_corners(edge, edge, edge + width, edge + height)
    box_corners = tf.where(boxed[:, None, None], _apply(forward, box_source), frame)
    depth = _depth_inside(box_corners, height, width)  # [B, H, W]
    text_depth = _depth_inside(text_corners, height, width)
    in_box = tf.clip_by_value(depth + 0.5, 0.0, 1.0)
    # Room between the text and the box's edge, in pixels of the plate: the border line and
    # the screws are drawn only where they keep a pixel from the ink.
    gap = tf.reduce_min(tf.where(text_depth > -0.5, depth, 1e3), axis=[1, 2])  # [B]
    border_width = 1.0 + u["border_width"] * 1.5
    inset = u["border_inset"] * tf.maximum(gap - border_width - 1.5, 0.0)
    border = (u["border"] < config.border_prob) & (gap >= border_width + 1.5)
    line = tf.clip_by_value(per_plate(border_width / 2 + 0.5)
                            - tf.abs(depth - per_plate(inset + border_width / 2)), 0.0, 1.0)
    marks = tf.where(per_plate(border), line, 0.0)
    # Screws: discs midway between the box's ends and the text, at the text's mid-height.
    radius = 1.0 + u["screw_radius"] * 1.5
    side_gap = tf.minimum(text_corners[:, 0, 0] - box_corners[:, 0, 0],
                          box_corners[:, 1, 0] - text_corners[:, 1, 0])
    screws = (u["screws"] < config.screws_prob) & boxed & (side_gap >= 2 * radius + 3)
    mid_y = tf.reduce_mean(text_corners[:, :, 1], axis=1)
    ys = tf.range(height, dtype=tf.float32)[None, :, None]
    xs = tf.range(width, dtype=tf.float32)[None, None, :]
    for end in (0, 1):
        x = (text_corners[:, end, 0] + box_corners[:, end, 0]) / 2
        disc = tf.clip_by_value(per_plate(radius + 0.5) - tf.sqrt(
            tf.square(xs - per_plate(x)) + tf.square(ys - per_plate(mid_y))), 0.0, 1.0)
        marks = tf.maximum(marks, tf.where(per_plate(screws), disc, 0.0))
    # A dark strip at the box's left end, where the text leaves room for it.
    strip_width = (0.3 + 0.4 * u["strip_width"]) * text_height * scale
    strip = (u["strip"] < config.strip_prob) & (side_gap >= strip_width + 3)
    from_left = xs - per_plate(box_corners[:, 0, 0] + 0.5)
    band = tf.clip_by_value(per_plate(strip_width) - from_left + 0.5, 0.0, 1.0) * in_box
    marks = tf.maximum(marks, tf.where(per_plate(strip), band, 0.0))
    # Speckle: the noise bank's rarest values as dots (from 0.15% to 0.9% of the pixels), on a
    # third of the plates grown to 3x3.
    def speckle(marks, top, left, amount, grow):
        bank = _bank_windows((height, width), top, left)
        dots = tf.cast(tf.abs(bank) > per_plate(2.6 + 0.6 * amount), tf.float32)
        return tf.maximum(marks, tf.where(per_plate(grow), _max3x3(dots), dots))
    marks = on_chosen(u["speckle"] < config.speckle_prob, speckle, marks, u["speckle_top"],
                      u["speckle_left"], u["speckle_amount"], u["speckle_grow"] < 1 / 3)
    # A scratch: a line 1-2 px wide across the box, through the text's middle half, sloped
    # and waving (its height by column; shallow enough that the vertical distance serves).
    columns_x = xs[0]  # [1, W]
    shown_height = text_height * scale
    mid_x = tf.reduce_mean(text_corners[:, :, 0], axis=1)[:, None]
    centre_y = (mid_y + (u["scratch_y"] - 0.5) * 0.5 * shown_height)[:, None]
    slope = (0.6 * u["scratch_slope"] - 0.3)[:, None]
    wave = (0.25 * u["scratch_wave"] * shown_height)[:, None]
    angle = (2 * math.pi * (columns_x / ((0.5 + u["scratch_period"]) * width)[:, None]
                            + u["scratch_phase"][:, None]))
    curve = centre_y + slope * (columns_x - mid_x) + wave * _whole_vectors(tf.sin, angle)
    scratch_width = 1.0 + u["scratch_width"]
    line = tf.clip_by_value(per_plate(scratch_width / 2 + 0.5) - tf.abs(ys - curve[:, None, :]),
                            0.0, 1.0) * in_box
    marks = tf.maximum(marks, tf.where(per_plate(u["scratch"] < config.scratch_prob), line, 0.0))

    ink_level, background, page, invert = _levels(u, config)
    plate = per_plate(page) + per_plate(background - page) * in_box
    direction = 2 * math.pi * u["direction"]
    strength = tf.where(u["gradient"] < config.gradient_prob,
                        u["gradient_amount"] * config.gradient, 0.0)
    across = tf.range(width, dtype=tf.float32) / width - 0.5
    down = tf.range(height, dtype=tf.float32) / height - 0.5
    plate += (per_plate(_whole_vectors(tf.cos, direction) * strength) * across[None, None, :]
              + per_plate(_whole_vectors(tf.sin, direction) * strength) * down[None, :, None])
    texture = _smooth_field((height // 8, width // 8), (height, width), u["texture_top"],
                            u["texture_left"])
    plate += texture * per_plate(tf.where(u["texture"] < config.texture_prob,
                                          u["texture_amount"] * config.texture, 0.0))
    # A pattern: plane waves of periods 4-16 px in random directions, summed (a quasicrystal
    # when they interfere), its standard deviation the drawn amount.
    waves = 0.0
    for i in range(_WAVES):
        angle = math.pi * u[f"wave_angle_{i}"]
        frequency = 0.4 + 1.2 * u[f"wave_freq_{i}"]  # radians per pixel
        waves += _whole_vectors(tf.cos, per_plate(frequency * _whole_vectors(tf.cos, angle)) * xs
                                + per_plate(frequency * _whole_vectors(tf.sin, angle)) * ys
                                + per_plate(2 * math.pi * u[f"wave_phase_{i}"]))
    pattern = tf.where(u["pattern"] < config.pattern_prob,
                       u["pattern_amount"] * config.pattern, 0.0)
    plate += waves / math.sqrt(_WAVES / 2) * per_plate(pattern)
    # Clutter: a block of another grey on the page, two pixels or more off the text.
    x0, y0 = u["clutter_x"] * width, u["clutter_y"] * height
    x1, y1 = x0 + 4 + u["clutter_w"] * width / 2, y0 + 3 + u["clutter_h"] * height / 2
    block = ((xs >= per_plate(x0)) & (xs < per_plate(x1)) & (ys >= per_plate(y0))
             & (ys < per_plate(y1)) & (text_depth < -2.5) & (in_box < 1.0))
    block &= per_plate((u["clutter"] < config.clutter_prob) & boxed)
    plate = tf.where(block, per_plate(u["clutter_level"] * 255), plate)

    # The contrast floor, as the blur will leave the strokes.
    rows, columns_kernel = _blur_kernels(u, config, shown_height)
    blurred = _resample(_separable_blur(coverage, rows, columns_kernel), u, config,
                        shown_height, height, width)
    kept = (tf.reduce_sum(blurred * coverage, axis=[1, 2])
            / tf.maximum(tf.reduce_sum(coverage, axis=[1, 2]), 1e-6))
    need = config.min_contrast / tf.maximum(kept, 1e-3)
    ink_level = tf.minimum(ink_level, tf.maximum(255 - need, 0.0))
    floor = tf.minimum(ink_level + need, 255.0)
    plate = tf.where(in_box > 0.5, tf.maximum(plate, per_plate(floor)), plate)
    coverage = tf.maximum(coverage, marks)
    plate += (per_plate(ink_level) - plate) * coverage
    plate = tf.where(per_plate(invert), 255.0 - plate, plate)
    plate = _separable_blur(plate, rows, columns_kernel)
    plate = _resample(plate, u, config, shown_height, height, width)
    noise = _bank_windows((height, width), u["noise_top"], u["noise_left"])
    plate += noise * per_plate(tf.where(u["noise"] < config.noise_prob,
                                        u["noise_amount"] * config.noise_sigma, 0.0))
    plates = tf.cast(tf.clip_by_value(tf.round(plate), 0, 255), tf.uint8)
    quality = tf.cast(config.jpeg_quality_min + u["jpeg_quality"]
                      * (96 - config.jpeg_quality_min), tf.int32)
    jpeg = u["jpeg"] < config.jpeg_prob

    def maybe_jpeg(args):
        image, apply, image_quality = args
        return tf.cond(apply, lambda: tf.image.adjust_jpeg_quality(
            image[..., None], image_quality)[..., 0], lambda: image)
    plates = tf.map_fn(maybe_jpeg, (plates, jpeg, quality), fn_output_signature=tf.uint8)
    return plates, clean_ink


@functools.cache
def _compiled(config: AugmentConfig, margin: int, height: int, width: int):
    """augment_with_ink's plates as one graph per (config, margin, plate size), for any batch
    size and plate length.

    Without AutoGraph: the effects are TensorFlow ops under Python control flow on Python
    values only, so the graph is the same, traced in 1.9 s instead of 4.7 s here (each
    make_records worker that writes augmented plates traces it once).
    """
    return tf.function(lambda ink, keys, ways: augment_with_ink(ink, config, keys, margin,
                                                                ways)[0], autograph=False,
                       input_signature=[tf.TensorSpec([None, height, width], tf.uint8),
                                        tf.TensorSpec([None, 2], tf.int64),
                                        tf.TensorSpec([None, None], tf.int32)])


def augment_plates(inks: np.ndarray, config: AugmentConfig, keys: np.ndarray,
                   margin: int, ways: np.ndarray | None = None) -> np.ndarray:
    """augment_with_ink's plates for numpy callers (the records' writer): uint8 [B, H, W] ->
    uint8 [B, H, W].

    keys: int64 [B, 2], each plate's (plate_keys).
    ways: int [B, L], as augment_with_ink's; None: every character either way.
    """
    if ways is None:
        ways = np.zeros([len(inks), 1], np.int32)  # no one-way character: the same as None
    return _compiled(config, margin, *inks.shape[1:])(
        tf.constant(inks, tf.uint8), tf.constant(keys, tf.int64),
        tf.constant(ways, tf.int32)).numpy()
