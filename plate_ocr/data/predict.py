"""Read plates from image files: any readable image, fitted to the model's input size."""

import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(paths: list[str]) -> list[str]:
    """Files as given, and the image files inside given folders (sorted)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def fit_image(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Grayscale, scaled to fit height x width keeping its aspect, padded with its background.

    The padding takes the median of the image's border, so a dark plate is padded dark.
    """
    gray = image.convert("L")
    scale = min(width / gray.width, height / gray.height)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    resized = np.asarray(gray.resize(size, Image.BILINEAR))
    border = np.concatenate([resized[0], resized[-1], resized[:, 0], resized[:, -1]])
    canvas = np.full((height, width), int(np.median(border)), np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = resized
    return canvas


def load_image(path: str, height: int, width: int) -> np.ndarray:
    """Reads and fits one image file.

    Raises:
      ValueError: the file is missing, unreadable or not an image (one-line message).
    """
    try:
        with Image.open(path) as image:
            return fit_image(image, height, width)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error.__class__.__name__})") from None


DIGITS = "0123456789"


def label_from_filename(path: str, alphabet: str = DIGITS) -> str | None:
    """The last run of the alphabet's characters in the file's stem: `37463.png` and
    `0007_37463.png` -> 37463 (digits); `car-AB123.jpg` -> AB123 (letters and digits)."""
    runs = re.findall(f"[{re.escape(alphabet)}]+", os.path.splitext(os.path.basename(path))[0])
    return runs[-1] if runs else None
