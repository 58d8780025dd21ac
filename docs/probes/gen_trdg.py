"""trdg1k probe: 1,000 images of random 5-digit strings drawn by TextRecognitionDataGenerator.

Run with /tmp/probes/venv_trdg/bin/python (trdg 1.8.0, Pillow 9.5). Writes /tmp/probes/trdg1k/NNNN_LABEL.png.

Two legibility guards (deviations from plain trdg defaults, see README.txt):
  * Lato-Hairline and Lato-HairlineItalic are left out of trdg's bundled latin fonts: at these sizes
    the hairline diagonal of their "4" vanishes, so the 4 reads as "-".
  * On the quasicrystal background a draw whose text contrast is under MIN_CONTRAST_QC grey levels
    (median background minus the mean of the darkest 30% of text pixels, from trdg's own text mask)
    is redrawn with the same label and font (new colour, skew, blur and background), up to 20 times.
  * trdg sizes its text box by the digits' advance widths, so an italic face whose last (first) digit
    overhangs its advance box gets that digit's right (left) edge cut off. Where the overhang at that
    size is over 1 px, the string handed to trdg gets a trailing (leading) space, which trdg draws as
    blank width; the file name's label is the 5 digits alone.
"""
import os
import random

import cv2
import numpy as np
from trdg.generators import GeneratorFromStrings
from PIL import ImageFont
from trdg.utils import load_fonts

SEED = 1001
OUT = "/tmp/probes/trdg1k"
GROUPS = [(32, 0), (48, 1), (64, 0), (40, 2)]  # (size, background_type): 0 gaussian noise, 1 plain white, 2 quasicrystal
PER_GROUP = 250
EXCLUDED_FONTS = {"Lato-Hairline.ttf", "Lato-HairlineItalic.ttf"}
MIN_CONTRAST_QC = 60
PARAMS = dict(language="en", skewing_angle=4, random_skew=True, blur=1, random_blur=True,
              text_color="#000000,#888888", margins=(5, 5, 5, 5), fit=False, output_mask=True)


def padded(text, font, size):
    """text with a space on each side where trdg would clip the first or last digit's overhang."""
    face = ImageFont.truetype(font, size)
    left = face.getbbox(text[0])[0] < -1
    right = face.getbbox(text[-1])[2] - face.getlength(text[-1]) > 1
    return (" " if left else "") + text + (" " if right else "")


def contrast(image, mask):
    gray = np.asarray(image.convert("L")).astype(float)
    text = np.asarray(mask)[:, :, 2] > 0
    darkest = np.sort(gray[text])
    return float(np.median(gray[~text]) - darkest[:max(1, len(darkest) * 3 // 10)].mean())


labels_rng = random.Random(SEED)
labels = ["".join(labels_rng.choice("0123456789") for _ in range(5)) for _ in range(PER_GROUP * len(GROUPS))]
# trdg draws its randomness from python's random, numpy and OpenCV's RNG (noise background): seed all three.
random.seed(SEED)
np.random.seed(SEED)
cv2.setRNGSeed(SEED)
# trdg's own default list (its bundled latin fonts), sorted for a fixed order, less the two hairline faces
fonts = [f for f in sorted(load_fonts("en")) if os.path.basename(f) not in EXCLUDED_FONTS]

os.makedirs(OUT, exist_ok=True)
index, redrawn, rows, pads = 0, [], [], 0
for group, (size, background) in enumerate(GROUPS):
    strings = [padded(text, fonts[k % len(fonts)], size)
               for k, text in enumerate(labels[group * PER_GROUP:(group + 1) * PER_GROUP])]
    generator = GeneratorFromStrings(strings, count=PER_GROUP, fonts=fonts, size=size,
                                     background_type=background, **PARAMS)
    for k, (result, given) in enumerate(generator):
        text = given.strip()
        assert text == labels[index], (text, labels[index])
        pads += given != text
        font = fonts[k % len(fonts)]
        tries = 0
        while result is None or (background == 2 and contrast(*result) < MIN_CONTRAST_QC):
            tries += 1
            assert tries <= 20, (index, text, font)
            result, _ = next(GeneratorFromStrings([given], count=1, fonts=[font], size=size,
                                                  background_type=background, **PARAMS))
        if tries:
            redrawn.append(f"{index:04d}_{text} ({os.path.basename(font)}, {tries} redraw(s))")
        result[0].save(os.path.join(OUT, f"{index:04d}_{text}.png"))
        rows.append(f"{index:04d}\t{text}\t{size}\t{background}\t{os.path.basename(font)}\t{contrast(*result):.1f}\n")
        index += 1
with open("/tmp/probes/trdg1k.tsv", "w") as f:  # per image: index, label, size, background, font, contrast
    f.writelines(rows)
print(index, "images in", OUT, "with", len(fonts), "fonts")
print("labels padded with a space against clipping:", pads)
print("redrawn for low contrast on quasicrystal:", len(redrawn))
for line in redrawn:
    print("  ", line)
