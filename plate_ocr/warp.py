"""Rotation, shear and perspective of plates' ink boxes, shrunk or dropped to stay in the frame.

augment.py's geometric effect, for a chunk of plates at once: the boxes' corners at every
scale (whole, half, quarter) are a few numpy calls over all the plates, the perspective
coefficients one batched solve, and PIL resamples each plate's box. Each plate goes through
the same float operations as alone, so its pixels do not depend on the chunk.
"""

import numpy as np
from PIL import Image


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PIL's 8 coefficients mapping target points back to source points: [k, 4, 2] -> [k, 8]."""
    (x, y), (u, v) = np.moveaxis(target, 2, 0), np.moveaxis(source, 2, 0)
    matrix = np.zeros((len(source), 4, 2, 8))  # per point, a row for u and one for v
    matrix[:, :, 0, 0], matrix[:, :, 0, 1], matrix[:, :, 0, 2] = x, y, 1
    matrix[:, :, 1, 3], matrix[:, :, 1, 4], matrix[:, :, 1, 5] = x, y, 1
    matrix[:, :, 0, 6], matrix[:, :, 0, 7] = -u * x, -u * y
    matrix[:, :, 1, 6], matrix[:, :, 1, 7] = -v * x, -v * y
    return np.linalg.solve(matrix.reshape(-1, 8, 8), source.reshape(-1, 8, 1))[..., 0]


def warp_inks(inks: np.ndarray, angle: np.ndarray, shear: np.ndarray, jitter: np.ndarray,
              margin: int) -> np.ndarray:
    """Rotation, shear and perspective of each plate's ink box about its centre, in the frame.

    Only the box is resampled (a third of the plate), and the distortion is shrunk to a half,
    then a quarter, then dropped, when the box's corners would leave the frame (plus a pixel
    for blur). The geometry runs on every plate and scale at once; PIL resamples each plate.

    Args:
      inks: uint8 [N, H, W] coverage of the glyphs (255 = ink).
      angle: float [N] rotations in radians; 0: none.
      shear: float [N] horizontal shear factors; 0: none.
      jitter: float [N, 4, 2] displacement of the box's corners in heights of the box (its
        pixels' scale: a box of small digits moves less); zeros: none.
      margin: pixels the ink keeps from the frame.
    Returns:
      uint8 [N, H, W]: the warped coverage, a new array.
    """
    count, height, width = inks.shape
    perspective = jitter.any(axis=(1, 2))
    moved = np.flatnonzero((angle != 0) | (shear != 0) | perspective)
    if len(moved) == 0:
        return inks.copy()
    # bitwise_or reduces the uint8 as it is; any() would convert every pixel to bool first.
    rows = np.bitwise_or.reduce(inks, axis=2)[moved] != 0
    cols = np.bitwise_or.reduce(inks, axis=1)[moved] != 0
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom = height - 1 - rows[:, ::-1].argmax(axis=1)
    right = width - 1 - cols[:, ::-1].argmax(axis=1)
    # The ink box's corners and centre in the coordinates of the box plus a pixel all round
    # (the source of the resampling: bilinear needs the zeros beyond the edge), and its
    # centre on the plate.
    size = np.stack([right + 1 - left, bottom + 1 - top], axis=1)
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) * size[:, None] + 1.0
    half = size / 2 + 1
    centre = half - 1 + np.stack([left, top], axis=1)
    # [scale, plate, ...]: each scale of each moved plate, then the largest scale that fits.
    scale = np.array([1.0, 0.5, 0.25])[:, None]
    cos, sin = np.cos(angle[moved] * scale), np.sin(angle[moved] * scale)
    slant = shear[moved] * scale
    linear = np.stack([cos, cos * slant - sin, sin, sin * slant + cos],  # rotate @ shear
                      axis=-1).reshape(len(scale), len(moved), 2, 2)
    # A product of matrices, as for one plate alone: BLAS rounds its sums its own way.
    target = ((corners - half[:, None]) @ linear.swapaxes(2, 3) + centre[:, None]
              + jitter[moved] * size[:, 1, None, None] * scale[..., None, None])
    low, high = np.floor(target.min(axis=2)), np.ceil(target.max(axis=2))
    fits = ((low > margin).all(axis=2) & (high[..., 0] < width - margin - 1)
            & (high[..., 1] < height - margin - 1))
    placed = np.flatnonzero(fits.any(axis=0))
    largest = fits.argmax(axis=0)[placed]
    linear, target = linear[largest, placed], target[largest, placed]
    low, high = low[largest, placed], high[largest, placed]
    # Without perspective the map is affine: its inverse in closed form (determinant 1) costs
    # a tenth of solving for a homography.
    a, b, c, d = linear[:, 1, 1], -linear[:, 0, 1], -linear[:, 1, 0], linear[:, 0, 0]
    dx, dy = (low - centre[placed]).T
    affine = np.stack([a, b, a * dx + b * dy + half[placed, 0],
                       c, d, c * dx + d * dy + half[placed, 1]], axis=1)
    transforms = [(Image.AFFINE, numbers) for numbers in affine.tolist()]
    homographies = np.flatnonzero(perspective[moved[placed]])
    if len(homographies):
        solved = _perspective_coefficients(corners[placed[homographies]],
                                           (target - low[:, None])[homographies])
        for i, numbers in zip(homographies.tolist(), solved.tolist()):
            transforms[i] = (Image.PERSPECTIVE, numbers)
    warped = inks.copy()
    warped[moved[placed]] = 0
    boxes = np.concatenate([low, high], axis=1).astype(int).tolist()
    # Each source box, in an image of all the plates one above the other.
    sources = np.stack([left - 1, moved * height + top - 1, right + 2,
                        moved * height + bottom + 2], axis=1)[placed].tolist()
    stacked = Image.frombuffer("L", (width, count * height), np.ascontiguousarray(inks), "raw",
                               "L", 0, 1)
    for plate, (method, numbers), (x0, y0, x1, y1), source in zip(
            moved[placed].tolist(), transforms, boxes, sources):
        # Resample from the ink's box into the target's box, each in its own coordinates.
        patch = stacked.crop(source).transform((x1 - x0, y1 - y0), method, numbers,
                                               Image.BILINEAR)
        warped[plate, y0:y1, x0:x1] = np.frombuffer(patch.tobytes(), np.uint8).reshape(
            y1 - y0, x1 - x0)
    return warped
