"""Make a clean plate look photographed: geometry, strokes, lighting, texture, blur, noise, JPEG.

Each effect has a probability and a range (AugmentConfig); every draw comes from the plate's
own generator, so an augmented plate is still a pure function of (seed, split, index). The
geometric effects are undone (shrunk, then dropped) when they would move ink out of the frame.

Plates are augmented a chunk at a time (augment_plates): first each plate's draws, from its
own generator in a fixed order, then each effect as a few numpy calls over the chunk (a numpy
call costs about as much as the arithmetic on one 64x128 plate), PIL's warp (warp.py) one
plate at a time and JPEG one quality at a time. Each plate goes through the same float
operations in the same order as alone: its pixels do not depend on the chunk, to the bit.
"""

import dataclasses
import functools
import io
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from plate_ocr import warp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (`*_prob`) and ranges of each effect; all zero probabilities: clean."""

    rotate_prob: float = 0.5
    rotate_degrees: float = 4.0  # up to this, either way
    shear_prob: float = 0.4
    shear: float = 0.2  # horizontal shear factor, either way (italic-like slant)
    perspective_prob: float = 0.3
    # Corner displacement as a fraction of the ink box's height, each way: the far end of
    # the digits at least (1 - 2x) / (1 + 2x) the height of the near end (2/3 at 0.1).
    perspective: float = 0.1
    stroke_prob: float = 0.3  # thicken or thin the strokes by about a pixel (half each side)
    contrast_prob: float = 0.7  # background and ink grey levels drawn from the ranges below
    background_min: int = 150
    ink_max: int = 100
    # Grey levels the background keeps above the ink as its strokes show after the blur,
    # everywhere: gradient and texture darken it no further, and thin or blurred strokes get
    # darker ink on a lighter plate (see _contrast_floor).
    min_contrast: float = 50.0
    gradient_prob: float = 0.4
    gradient: float = 60.0  # grey levels across the plate
    texture_prob: float = 0.3
    texture: float = 25.0  # grey levels of low-frequency texture
    border_prob: float = 0.3
    invert_prob: float = 0.15  # light digits on a dark plate
    blur_prob: float = 0.4
    blur_sigma: float = 1.0  # 0.7: one binomial pass; up to 1.0: sometimes two
    noise_prob: float = 0.5
    noise_sigma: float = 12.0
    jpeg_prob: float = 0.3
    jpeg_quality_min: int = 25


CLEAN = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)
                         if f.name.endswith("_prob")})


@functools.cache
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Standard normal noise for twice the plate in each direction, the same in every process.

    A plate's noise is a window of it at offsets from the plate's generator: a slice instead
    of 8,192 fresh normal draws, which took a sixth of an augmented plate's time.
    """
    return np.random.default_rng(0).standard_normal((2 * height, 2 * width), dtype=np.float32)


@functools.cache
def _centred_coordinates(size: int) -> np.ndarray:
    """Pixel positions as fractions of the size, centred on 0: -0.5 .. 0.5."""
    return np.arange(size, dtype=np.float32) / size - 0.5


@functools.cache
def _bilinear_matrix(size: int, coarse_size: int) -> np.ndarray:
    """[size, coarse_size] weights that upsample a coarse axis bilinearly (pixel centres)."""
    source = np.clip((np.arange(size) + 0.5) * coarse_size / size - 0.5, 0, coarse_size - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, coarse_size - 1)
    matrix = np.zeros((size, coarse_size), np.float32)
    np.add.at(matrix, (np.arange(size), low), 1 - (source - low))
    np.add.at(matrix, (np.arange(size), high), source - low)
    return matrix


_SHADED_AT_ONCE = 64  # plates per _shade call: its workspace holds 3 floats a pixel of them


@functools.cache
def _workspace(height: int, width: int) -> np.ndarray:
    """float32 [3, _SHADED_AT_ONCE, H, W] that _shade works in, call after call.

    Fresh arrays this large would be fresh pages every time (glibc hands large freed blocks
    back to the system), and the first touch of a page costs more than the arithmetic on it.
    Not for two threads at once.
    """
    return np.empty((3, _SHADED_AT_ONCE, height, width), np.float32)


class _Draws(NamedTuple):
    """One plate's draws; None (or the value that changes nothing) for an effect not drawn."""

    angle: float  # radians
    shear: float
    jitter: np.ndarray  # float [4, 2]: the box corners' displacement in ink-box heights
    stroke: int  # 1: thicken, -1: thin, 0: neither
    background: float
    ink_level: float
    gradient: tuple[float, float] | None  # grey levels across the plate, along x and along y
    texture: tuple[np.ndarray, float] | None  # float32 [H/8, W/8] normal noise, its amount
    border: bool
    invert: bool
    blur_passes: int
    noise: tuple[int, int, float] | None  # top and left of its window of the bank, amount
    jpeg_quality: int  # 0: no JPEG


# One uniform per plate for each of these, drawn in a single call (a call to the generator
# costs more than the numbers it draws), by use; augment_ops draws the same columns.
DRAWS = ("rotate", "rotate_amount", "shear", "shear_amount", "perspective", "stroke",
         "stroke_grow", "contrast", "background", "ink_level", "gradient", "direction",
         "gradient_amount", "texture", "texture_amount", "border", "invert", "blur",
         "blur_twice", "noise", "noise_top", "noise_left", "noise_amount", "jpeg",
         "jpeg_quality")


def _draw(config: AugmentConfig, rng: np.random.Generator, height: int, width: int) -> _Draws:
    """One plate's draws: the DRAWS, then the perspective's corners and the texture's coarse
    noise for a plate that drew them."""
    u = dict(zip(DRAWS, rng.random(len(DRAWS)).tolist()))
    angle = (np.deg2rad((2 * u["rotate_amount"] - 1) * config.rotate_degrees)
             if u["rotate"] < config.rotate_prob else 0.0)
    shear = (2 * u["shear_amount"] - 1) * config.shear if u["shear"] < config.shear_prob else 0.0
    jitter = (rng.uniform(-1, 1, (4, 2)) * config.perspective
              if u["perspective"] < config.perspective_prob else np.zeros((4, 2)))
    stroke = (1 if u["stroke_grow"] < 0.5 else -1) if u["stroke"] < config.stroke_prob else 0
    background, ink_level = 255.0, 0.0
    if u["contrast"] < config.contrast_prob:
        background = config.background_min + (255 - config.background_min) * u["background"]
        ink_level = config.ink_max * u["ink_level"]
    gradient = None
    if u["gradient"] < config.gradient_prob:
        direction, strength = 2 * np.pi * u["direction"], config.gradient * u["gradient_amount"]
        gradient = (np.cos(direction) * strength, np.sin(direction) * strength)
    texture = None
    if u["texture"] < config.texture_prob:
        coarse = rng.standard_normal((height // 8, width // 8), dtype=np.float32)
        texture = (coarse, config.texture * u["texture_amount"])
    blur_passes = 0
    if u["blur"] < config.blur_prob:
        blur_passes = 1 + int(u["blur_twice"] < (config.blur_sigma - 0.7) / 0.3)
    noise = None
    if u["noise"] < config.noise_prob:
        noise = (int(u["noise_top"] * height), int(u["noise_left"] * width),
                 config.noise_sigma * u["noise_amount"])
    jpeg_quality = (config.jpeg_quality_min + int((96 - config.jpeg_quality_min)
                                                  * u["jpeg_quality"])
                    if u["jpeg"] < config.jpeg_prob else 0)
    return _Draws(angle, shear, jitter, stroke, background, ink_level, gradient, texture,
                  u["border"] < config.border_prob, u["invert"] < config.invert_prob,
                  blur_passes, noise, jpeg_quality)


def _stroke(inks: np.ndarray, draws: Sequence[_Draws]) -> None:
    """Thickens or thins the strokes of the plates that drew it by about a pixel, in place.

    The 3x3 maximum (minimum) moves every edge out (in) by a whole pixel; blended half and
    half with the original, by half a pixel on each side: a hairline fades instead of
    vanishing, and the counters and gaps of a bold face at 18 px stay open (the whole
    maximum closed nearly all of them).
    """
    strokes = np.array([d.stroke for d in draws])
    for grow in (True, False):
        chosen = np.flatnonzero(strokes == (1 if grow else -1))
        if len(chosen):
            ink = inks[chosen]
            inks[chosen] = (ink.astype(np.uint16) + _neighbourhood(ink, grow)) // 2


def _neighbourhood(inks: np.ndarray, grow: bool) -> np.ndarray:
    """3x3 maximum (grow) or minimum (shrink) of each plate's ink, zeros beyond the frame.

    Rows, then columns: 4 reductions of shifted views instead of 9 (np.pad is 10x slower
    than filling a zeroed array).
    """
    count, height, width = inks.shape
    padded = np.zeros((count, height + 2, width + 2), inks.dtype)
    padded[:, 1:-1, 1:-1] = inks
    reduce = np.maximum if grow else np.minimum
    rows = reduce(reduce(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return reduce(reduce(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def _shade(inks: np.ndarray, draws: Sequence[_Draws], min_contrast: float,
           out: np.ndarray) -> None:
    """Grey levels, gradient and texture, the ink and border (blurred), inversion and noise.

    The blur acts on the ink's coverage, not on the finished plate: the shading under it is
    smooth (a ramp, texture interpolated from an eighth of the resolution), which a 3x3
    blur leaves as it is, so the ink's edges are all it would change. One blur of the
    coverage serves both the contrast floor and the plate.

    Args:
      inks: uint8 [N, H, W] coverage, N up to _SHADED_AT_ONCE.
      draws: each plate's draws.
      min_contrast: grey levels the background keeps above the ink level.
      out: uint8 [N, H, W] for the plates.
    """
    count, height, width = inks.shape
    plate, coverage, spare = _workspace(height, width)[:, :count]

    def values(name: str) -> np.ndarray:  # float32 [N, 1, 1], broadcasting over the pixels
        return np.array([getattr(d, name) for d in draws], np.float32).reshape(count, 1, 1)

    def chosen(name: str) -> np.ndarray:  # the plates that drew the effect
        return np.flatnonzero([bool(getattr(d, name)) for d in draws])

    # (Background + y gradient) + x gradient, as for one plate; a plate without a gradient
    # gets one of 0 grey levels, which adds exactly nothing.
    gradient = np.array([d.gradient or (0.0, 0.0) for d in draws], np.float32)[..., None, None]
    background = values("background")
    np.add(background + gradient[:, 1] * _centred_coordinates(height)[:, None],
           gradient[:, 0] * _centred_coordinates(width), out=plate)
    textured = chosen("texture")
    if len(textured):
        coarse = np.stack([draws[i].texture[0] for i in textured])
        amount = np.array([draws[i].texture[1] for i in textured], np.float32)
        # Bilinear upsampling as two small products with cached weights (PIL's resize of a
        # float image cost several times as much).
        texture = np.matmul(_bilinear_matrix(height, height // 8) @ coarse,
                            _bilinear_matrix(width, width // 8).T, out=spare[:len(textured)])
        texture *= amount[:, None, None]
        for i, plate_texture in zip(textured, texture):
            plate[i] += plate_texture
    passes = np.array([d.blur_passes for d in draws])
    np.divide(inks, np.float32(255), out=coverage)
    ink_level, floor = _contrast_floor(coverage, passes, values("ink_level"), min_contrast)
    # Up to the floor, the plates whose shading may reach below it (np.maximum costs five
    # additions): the background less half of each gradient, less the texture's extreme.
    lowest = background[:, 0, 0] - np.abs(gradient).sum(axis=(1, 2, 3)) / 2
    for i in textured.tolist():
        lowest[i] -= draws[i].texture[1] * np.abs(draws[i].texture[0]).max()
    for i in np.flatnonzero(lowest < floor[:, 0, 0]).tolist():
        np.maximum(plate[i], floor[i], out=plate[i])
    # The border (ink level, a pixel wide) as more coverage: the ink keeps a margin from it.
    for i in chosen("border").tolist():
        coverage[i] += _frame(height, width, int(passes[i]))
    coverage *= np.subtract(ink_level, plate, out=spare)
    plate += coverage  # plate + (ink_level - plate) * coverage
    inverted = chosen("invert")
    plate[inverted] = 255.0 - plate[inverted]
    noise_bank = _noise_bank(height, width)
    for i, draw in enumerate(draws):
        if draw.noise:
            top, left, amount = draw.noise
            plate[i] += np.multiply(noise_bank[top:top + height, left:left + width], amount,
                                    out=spare[0])
    np.clip(np.rint(plate, out=plate), 0, 255, out=plate)
    np.copyto(out, plate, casting="unsafe")


@functools.cache
def _frame(height: int, width: int, passes: int) -> np.ndarray:
    """float32 [H, W]: a one-pixel frame round the plate, blurred `passes` times."""
    frame = np.zeros((1, height, width), np.float32)
    frame[:, [0, -1]], frame[:, :, [0, -1]] = 1, 1
    _blur(frame, passes, np.empty_like(frame))
    return frame[0]


def _contrast_floor(coverage: np.ndarray, passes: np.ndarray, ink_level: np.ndarray,
                    min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Blurs the coverage of the plates that drew a blur, in place, and returns the ink
    level and the background's floor that keep each plate's strokes min_contrast grey
    levels apart from it.

    A stroke shows (background - ink) x the coverage it keeps through the blur: the mean of
    the blurred coverage over the ink, weighted by the coverage (~0.85 for a sharp regular
    face, ~0.3 for a blurred hairline). The background may not come closer to the ink than
    min_contrast over that; where that would pass white, the ink darkens instead.

    Args:
      coverage: float32 [N, H, W] ink coverage 0-1, after the stroke effect; blurred here.
      passes: int [N] each plate's blur passes.
      ink_level: float32 [N, 1, 1] as drawn.
    Returns:
      (float32 [N, 1, 1] ink level, float32 [N, 1, 1] the background's floor).
    """
    def dots(a, b):  # per plate, sum(a x b): a product of [1, HW] and [HW, 1] each
        return (a.reshape(len(a), 1, -1) @ b.reshape(len(b), -1, 1))[:, 0, 0]
    total = dots(coverage, np.ones_like(coverage[:1]))
    kept = dots(coverage, coverage)  # sum(blurred x coverage) per plate
    for times in np.unique(passes[passes > 0]).tolist():
        chosen = np.flatnonzero(passes == times)
        part = coverage[chosen]
        _blur(part, times, np.empty_like(part))
        kept[chosen] = dots(part, coverage[chosen])
        coverage[chosen] = part
    kept = (kept / np.maximum(total, np.float32(1e-6)))[:, None, None]
    need = np.float32(min_contrast) / np.maximum(kept, np.float32(1e-3))
    ink_level = np.minimum(ink_level, np.maximum(np.float32(255) - need, np.float32(0)))
    return ink_level, np.minimum(ink_level + need, np.float32(255))


def _blur(plates: np.ndarray, passes: int, spare: np.ndarray) -> None:
    """[1, 2, 1] / 4 across, then down, `passes` times, in place (each about a Gaussian of
    sigma 0.7).

    The divisions by 4 wait for the end, all in one: dividing by a power of 2 is exact, so
    waiting changes no rounding. spare: an array of the same shape to work in.
    """
    for _ in range(passes):
        _sum_neighbours(plates, 2, spare)
        _sum_neighbours(spare, 1, plates)
    plates /= 16 ** passes


def _sum_neighbours(plates: np.ndarray, axis: int, out: np.ndarray) -> None:
    """(previous + 2 this) + next, down (axis 1) or across (axis 2), edges repeated.

    The sums run on the flat arrays with neighbours a row or a pixel apart: one long loop per
    step (a slice across the plates is three times slower). What that gets wrong, where a
    neighbour is in the next row or plate, is the edges, set apart after.
    """
    step = plates.strides[axis] // plates.itemsize
    flat, inner = plates.reshape(-1), out.reshape(-1)[step:-step]
    np.multiply(flat[step:-step], 2, out=inner)
    inner += flat[:-2 * step]
    inner += flat[2 * step:]
    source, target = np.moveaxis(plates, axis, 0), np.moveaxis(out, axis, 0)
    target[0] = 3 * source[0] + source[1]
    target[-1] = source[-2] + 3 * source[-1]


def _jpeg(plates: np.ndarray, quality: int) -> np.ndarray:
    """Plates through a JPEG encoder and decoder at that quality: uint8 [N, H, W].

    The plates are one image, one above the other: JPEG codes 8x8 blocks on their own (but
    for the lossless chain of DC values), so when H is a multiple of 8 each plate comes back
    as it would alone, for one set-up of the encoder and decoder instead of N.
    """
    count, height, width = plates.shape
    buffer = io.BytesIO()
    Image.frombuffer("L", (width, count * height), plates, "raw", "L", 0, 1).save(
        buffer, format="JPEG", quality=quality)
    # The decoder straight onto the bytes: Image.open's parsing costs as much as decoding.
    decoded = Image.frombytes("L", (width, count * height), buffer.getvalue(), "jpeg", "L", "")
    return np.frombuffer(decoded.tobytes(), np.uint8).reshape(plates.shape)


def augment_plates(inks: np.ndarray, config: AugmentConfig,
                   rngs: Sequence[np.random.Generator], margin: int) -> np.ndarray:
    """Turns plates' ink coverage (uint8, 255 = ink) into photographed-looking plates.

    Plate i is a function of inks[i] and rngs[i] alone: the pixels augment() gives it. The
    more plates at once, the more of them share a JPEG quality.

    Args:
      inks: uint8 [N, H, W] coverage of the glyphs, all inside the frame's margin.
      config: probabilities and ranges.
      rngs: the plates' generators, one each.
      margin: pixels the ink keeps from the frame.
    Returns:
      uint8 [N, H, W] grey plates.
    """
    count, height, width = inks.shape
    draws = [_draw(config, rng, height, width) for rng in rngs]
    inks = warp.warp_inks(inks, np.array([d.angle for d in draws]),
                          np.array([d.shear for d in draws]),
                          np.stack([d.jitter for d in draws]), margin)
    _stroke(inks, draws)
    plates = np.empty_like(inks)
    for start in range(0, count, _SHADED_AT_ONCE):
        part = slice(start, start + _SHADED_AT_ONCE)
        _shade(inks[part], draws[part], config.min_contrast, plates[part])
    qualities = np.array([d.jpeg_quality for d in draws])
    for quality in np.unique(qualities[qualities > 0]).tolist():
        chosen = np.flatnonzero(qualities == quality)
        # All plates of a quality as one image when they are whole 8x8 blocks (_jpeg).
        for group in [chosen] if height % 8 == 0 else [[i] for i in chosen]:
            plates[group] = _jpeg(plates[group], quality)
    return plates


def augment(ink: np.ndarray, config: AugmentConfig, rng: np.random.Generator,
            margin: int) -> np.ndarray:
    """Turns a plate's ink coverage (uint8, 255 = ink) into a photographed-looking plate.

    Args:
      ink: uint8 [H, W] coverage of the glyphs, all inside the frame's margin.
      config: probabilities and ranges.
      rng: the plate's generator.
      margin: pixels the ink keeps from the frame.
    Returns:
      uint8 [H, W] grey plate.
    """
    return augment_plates(ink[None], config, [rng], margin)[0]
