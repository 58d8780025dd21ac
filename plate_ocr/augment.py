"""Make a clean plate look photographed: geometry, strokes, lighting, texture, blur, noise, JPEG.

Each effect has a probability and a range (AugmentConfig); every draw comes from the plate's
own generator, so an augmented plate is still a pure function of (seed, split, index). The
geometric effects are undone (shrunk, then dropped) when they would move ink out of the frame.
"""

import dataclasses
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
    box = np.array([[left, top], [right + 1, top], [right + 1, bottom + 1], [left, bottom + 1]],
                   float)
    centre = box.mean(axis=0)
    for scale in (1.0, 0.5, 0.25):
        cos, sin = np.cos(angle * scale), np.sin(angle * scale)
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1, shear * scale], [0, 1]])
        target = (box - centre) @ linear.T + centre + jitter * scale
        x0, y0 = np.floor(target.min(axis=0)).astype(int)
        x1, y1 = np.ceil(target.max(axis=0)).astype(int)
        if x0 > margin and y0 > margin and x1 < width - margin - 1 and y1 < height - margin - 1:
            # Resample only the target's box; coordinates relative to its corner.
            patch = Image.fromarray(ink).transform(
                (x1 - x0, y1 - y0), Image.PERSPECTIVE,
                _perspective_coefficients(box, target - [x0, y0]), Image.BILINEAR)
            warped = np.zeros_like(ink)
            warped[y0:y1, x0:x1] = np.asarray(patch)
            return warped
    return ink


def _neighbourhood(ink: np.ndarray, grow: bool) -> np.ndarray:
    """3x3 maximum (grow) or minimum (shrink) of the ink: numpy shifts, no rank filter."""
    padded = np.pad(ink, 1)
    reduce = np.maximum if grow else np.minimum
    out = padded[1:-1, 1:-1].copy()
    for dy in range(3):
        for dx in range(3):
            reduce(out, padded[dy:dy + ink.shape[0], dx:dx + ink.shape[1]], out=out)
    return out


def _binomial_blur(plate: np.ndarray, passes: int) -> np.ndarray:
    """[1, 2, 1] / 4 along both axes, `passes` times (about a Gaussian of sigma 0.7 each)."""
    for _ in range(passes):
        padded = np.pad(plate, 1, mode="edge")
        plate = (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4
        plate = (plate[:-2] + 2 * plate[1:-1] + plate[2:]) / 4
    return plate


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
        ramp = (np.cos(direction) * (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
                + np.sin(direction) * (np.arange(height, dtype=np.float32) / height - 0.5)[:, None])
        plate += ramp * rng.uniform(0, config.gradient)
    if rng.random() < config.texture_prob:
        coarse = rng.standard_normal((height // 8, width // 8), dtype=np.float32)
        plate += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)) \
            * rng.uniform(0, config.texture)
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
        plate += rng.standard_normal(plate.shape, dtype=np.float32) * rng.uniform(
            0, config.noise_sigma)
    plate = np.clip(np.rint(plate), 0, 255).astype(np.uint8)
    if rng.random() < config.jpeg_prob:
        buffer = io.BytesIO()
        quality = int(rng.integers(config.jpeg_quality_min, 96))
        Image.fromarray(plate).save(buffer, format="JPEG", quality=quality)
        plate = np.asarray(Image.open(buffer).convert("L"))
    return plate
