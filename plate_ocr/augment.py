"""Make a clean plate look photographed: geometry, strokes, lighting, texture, blur, noise, JPEG.

Each effect has a probability and a range (AugmentConfig); every draw comes from the plate's
own generator, so an augmented plate is still a pure function of (seed, split, index). The
geometric effects are undone (shrunk, then dropped) when they would move ink out of the frame.
"""

import dataclasses
import functools
import io

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (`*_prob`) and ranges of each effect; all zero probabilities: clean."""

    rotate_prob: float = 0.5
    rotate_degrees: float = 4.0  # up to this, either way
    shear_prob: float = 0.4
    shear: float = 0.2  # horizontal shear factor, either way (italic-like slant)
    perspective_prob: float = 0.3
    perspective: float = 0.05  # corner displacement as a fraction of the plate size
    stroke_prob: float = 0.3  # thicken or thin the strokes by about a pixel
    contrast_prob: float = 0.7  # background and ink grey levels drawn from the ranges below
    background_min: int = 150
    ink_max: int = 100
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


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def _perspective_coefficients(source, target) -> list[float]:
    """PIL's 8 coefficients mapping target points back to source points."""
    matrix, vector = [], []
    for (x, y), (u, v) in zip(target, source):
        matrix.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        matrix.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        vector += [u, v]
    return np.linalg.solve(np.array(matrix, float), np.array(vector, float)).tolist()


def _warp(ink: np.ndarray, config: AugmentConfig, rng: np.random.Generator,
          margin: int) -> np.ndarray:
    """Rotation, shear and perspective of the ink's box about its centre, inside the frame.

    Only the box is resampled (a third of the plate), and the distortion is shrunk, then
    dropped, when the box's corners would leave the frame (plus a pixel for blur).
    """
    height, width = ink.shape
    angle = np.deg2rad(rng.uniform(-1, 1) * config.rotate_degrees) \
        if rng.random() < config.rotate_prob else 0.0
    shear = rng.uniform(-1, 1) * config.shear if rng.random() < config.shear_prob else 0.0
    jitter = (rng.uniform(-1, 1, (4, 2)) * config.perspective * np.array([width, height])
              if rng.random() < config.perspective_prob else np.zeros((4, 2)))
    if not angle and not shear and not jitter.any():
        return ink
    top, bottom, left, right = _ink_box(ink)
    box_width, box_height = right + 1 - left, bottom + 1 - top
    # The ink box's corners and centre in the coordinates of the box plus a pixel all round
    # (the source of the resampling: bilinear needs the zeros beyond the edge), and its
    # centre on the plate.
    corners = np.array([[0, 0], [box_width, 0], [box_width, box_height], [0, box_height]],
                       float) + 1
    half = np.array([box_width / 2, box_height / 2]) + 1
    centre = half - 1 + [left, top]
    for scale in (1.0, 0.5, 0.25):
        cos, sin, slant = np.cos(angle * scale), np.sin(angle * scale), shear * scale
        linear = np.array([[cos, cos * slant - sin], [sin, sin * slant + cos]])  # rotate @ shear
        target = (corners - half) @ linear.T + centre + jitter * scale
        x0, y0 = np.floor(target.min(axis=0)).astype(int)
        x1, y1 = np.ceil(target.max(axis=0)).astype(int)
        if x0 > margin and y0 > margin and x1 < width - margin - 1 and y1 < height - margin - 1:
            # Resample from the ink's box into the target's box, each in its own coordinates.
            # Without perspective the map is affine: its inverse in closed form (determinant
            # 1) costs a tenth of solving for a homography.
            if jitter.any():
                method = Image.PERSPECTIVE
                coefficients = _perspective_coefficients(corners, target - [x0, y0])
            else:
                method = Image.AFFINE
                a, b, c, d = linear[1, 1], -linear[0, 1], -linear[1, 0], linear[0, 0]
                dx, dy = x0 - centre[0], y0 - centre[1]
                coefficients = (a, b, a * dx + b * dy + half[0], c, d, c * dx + d * dy + half[1])
            patch = Image.fromarray(ink[top - 1:bottom + 2, left - 1:right + 2]).transform(
                (x1 - x0, y1 - y0), method, coefficients, Image.BILINEAR)
            warped = np.zeros_like(ink)
            warped[y0:y1, x0:x1] = np.asarray(patch)
            return warped
    return ink


def _neighbourhood(ink: np.ndarray, grow: bool) -> np.ndarray:
    """3x3 maximum (grow) or minimum (shrink) of the ink: numpy shifts, no rank filter."""
    padded = np.zeros((ink.shape[0] + 2, ink.shape[1] + 2), ink.dtype)  # np.pad is 10x slower
    padded[1:-1, 1:-1] = ink
    reduce = np.maximum if grow else np.minimum
    out = padded[1:-1, 1:-1].copy()
    for dy in range(3):
        for dx in range(3):
            reduce(out, padded[dy:dy + ink.shape[0], dx:dx + ink.shape[1]], out=out)
    return out


def _binomial_blur(plate: np.ndarray, passes: int) -> np.ndarray:
    """[1, 2, 1] / 4 along both axes, `passes` times (about a Gaussian of sigma 0.7 each)."""
    for _ in range(passes):
        plate = _blur_axis(_blur_axis(plate.T).T)
    return plate


def _blur_axis(plate: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 down the rows, edge rows repeated (np.pad's "edge" at a tenth the cost)."""
    out = np.empty_like(plate)
    out[1:-1] = (plate[:-2] + 2 * plate[1:-1] + plate[2:]) / 4
    out[0] = (3 * plate[0] + plate[1]) / 4
    out[-1] = (plate[-2] + 3 * plate[-1]) / 4
    return out


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
    height, width = ink.shape
    ink = _warp(ink, config, rng, margin)
    if rng.random() < config.stroke_prob:
        grow = rng.random() < 0.5
        changed = _neighbourhood(ink, grow)
        # Thinning blends with the original, so hairline strokes fade instead of vanishing.
        ink = changed if grow else ((ink.astype(np.uint16) + changed) // 2).astype(np.uint8)
    background, ink_level = 255.0, 0.0
    if rng.random() < config.contrast_prob:
        background = rng.uniform(config.background_min, 255)
        ink_level = rng.uniform(0, config.ink_max)
    plate = np.full((height, width), background, np.float32)
    if rng.random() < config.gradient_prob:
        direction = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0, config.gradient)
        plate += (np.float32(np.cos(direction) * strength) * _centred_coordinates(width)[None, :]
                  + np.float32(np.sin(direction) * strength) * _centred_coordinates(height)[:, None])
    if rng.random() < config.texture_prob:
        coarse = rng.standard_normal((height // 8, width // 8), dtype=np.float32)
        # Bilinear upsampling as two small products with cached weights (PIL's resize of a
        # float image cost several times as much).
        texture = (_bilinear_matrix(height, height // 8) @ coarse
                   @ _bilinear_matrix(width, width // 8).T)
        plate += texture * np.float32(rng.uniform(0, config.texture))
    coverage = ink.astype(np.float32) / 255.0
    plate += (ink_level - plate) * coverage
    if rng.random() < config.border_prob:
        plate[[0, -1], :] = ink_level
        plate[:, [0, -1]] = ink_level
    if rng.random() < config.invert_prob:
        plate = 255.0 - plate
    if rng.random() < config.blur_prob:
        plate = _binomial_blur(plate, 1 + int(rng.random() < (config.blur_sigma - 0.7) / 0.3))
    if rng.random() < config.noise_prob:
        bank = _noise_bank(height, width)
        top, left = rng.integers(height), rng.integers(width)
        plate += bank[top:top + height, left:left + width] * rng.uniform(0, config.noise_sigma)
    plate = np.clip(np.rint(plate), 0, 255).astype(np.uint8)
    if rng.random() < config.jpeg_prob:
        buffer = io.BytesIO()
        quality = int(rng.integers(config.jpeg_quality_min, 96))
        Image.fromarray(plate).save(buffer, format="JPEG", quality=quality)
        plate = np.asarray(Image.open(buffer, formats=["JPEG"]))
    return plate
