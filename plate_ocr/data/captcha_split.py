"""The captcha split: test labels drawn by the `captcha` package, as distorted captchas.

Another program's style, not ours: the package's own bundled face (DroidSansMono), each
character rotated up to 30 degrees, warped and overlapping the next, a word space now and then,
noise dots and an arc in the ink's colour, a smoothing filter, coloured ink on a light
background. Each image (150-176 x 56-64 pixels, about the package's default 160 x 60) is fitted
to the model's input by predict.fit_image, as bin/predict fits a user's image.

captcha 0.7 draws every random choice from the `secrets` module (the operating system's
generator, which no seed reaches), so each plate is drawn with captcha.image's `secrets`
replaced by a random.Random seeded from (seed, index): a plate is a pure function of those, and
the shards are byte-reproducible for a seed. The version is pinned in setup.cfg for the same
reason: another release may draw other pixels, or call other functions.
"""

import contextlib
import os
import random
import statistics
from typing import Callable, Sequence

import captcha
import numpy as np
from captcha import image as captcha_image
from PIL import ImageFont

from plate_ocr.data import drawn_split, predict, records

SPLIT = "captcha"
LABELS_FROM = "test"  # the first test labels, as the foreign split reads
_STREAM = 17  # spawn key of its plates, apart from the splits' (0-5), the labels' and foreign's
_WIDTHS, _HEIGHTS = (150, 176), (56, 64)  # each plate's captcha size, both ends included
FONT_FILE = captcha_image.DEFAULT_FONTS[0]
FONT = {"name": "DroidSansMono", "family": "Droid Sans Mono", "file": os.path.basename(FONT_FILE)}


class _SeededSecrets(random.Random):
    """The functions of `secrets` that captcha.image calls, from a seeded generator.

    It also keeps the size of each font it is asked to choose (one per character drawn).
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        self.font_sizes: list[int] = []

    def randbelow(self, n: int) -> int:
        return self.randrange(n)  # ValueError for n <= 0, as secrets.randbelow

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)

    def choice(self, seq):
        item = super().choice(seq)
        if isinstance(item, ImageFont.FreeTypeFont):
            self.font_sizes.append(item.size)
        return item


@contextlib.contextmanager
def _drawing_with(generator: _SeededSecrets):
    saved = captcha_image.secrets
    captcha_image.secrets = generator
    try:
        yield
    finally:
        captcha_image.secrets = saved


def _generator(seed: int, index: int) -> _SeededSecrets:
    # SeedSequence, not hash(): the same integer in every process and every run.
    state = np.random.SeedSequence(seed, spawn_key=(_STREAM, index)).generate_state(4)
    return _SeededSecrets(int.from_bytes(state.tobytes(), "little"))


def render_captcha(numbers: Sequence[int], seed: int, alphabet: str, lengths: Sequence[int],
                   height: int = 64, width: int = 128, first_index: int = 0
                   ) -> tuple[np.ndarray, list[tuple[str, str, int, int]]]:
    """Draws labels as captchas, each from its own generator, fitted to height x width.

    Args:
      numbers, alphabet, lengths: the label numbers and how they read (label_digits).
      seed, first_index: the dataset's seed and the split index of the first label.
      height, width: the plates' size.
    Returns:
      (uint8 [N, height, width], per plate (text, font name, median font size in plate
      pixels, spacing 0: the package places the characters)).
    """
    images, details = np.zeros((len(numbers), height, width), np.uint8), []
    for offset, number in enumerate(numbers):
        generator = _generator(seed, first_index + offset)
        size = generator.randint(*_WIDTHS), generator.randint(*_HEIGHTS)
        text = "".join(alphabet[d] for d in records.label_digits(number, alphabet, lengths))
        with _drawing_with(generator):
            drawn = captcha_image.ImageCaptcha(width=size[0], height=size[1]).generate_image(text)
        images[offset] = predict.fit_image(drawn, height, width)
        scale = min(height / drawn.height, width / drawn.width)  # fit_image's
        details.append((text, FONT["name"],
                        round(statistics.median(generator.font_sizes) * scale), 0))
    return images, details


def add_split(records_dir: str, info: dict, numbers: Sequence[int], num_shards: int,
              on_progress: Callable[[int], None] = lambda n: None) -> dict:
    """Writes the captcha split into a finished dataset and lists it in its dataset_info.json.

    Args:
      records_dir, info: the dataset and its metadata, just written.
      numbers: the plates' labels (the first LABELS_FROM ones, 1 or more).
      num_shards, on_progress: shards of the split (at most one per plate); called with each
        number of plates written.
    Returns:
      the metadata written, with the split and its face (drawn_split.add_split).
    """
    def draw(chunk: Sequence[int], first_index: int):
        return render_captcha(chunk, info["seed"], info["alphabet"], records.plate_lengths(info),
                              info["image_height"], info["image_width"], first_index)
    return drawn_split.add_split(records_dir, info, SPLIT, numbers, draw, num_shards, [FONT],
                                 f"captcha {captcha.__version__}", LABELS_FROM, on_progress)
