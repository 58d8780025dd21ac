"""The foreign split: plates drawn by Cairo in font families training never uses.

Training plates are PIL glyph bitmaps composed by numpy (render.py), then augment.py's effects.
These come from another rasterizer (Cairo, through FreeType, reading the font file itself) and
another hand: each is drawn as a crop of its own size and aspect, as a detector would cut it
from a photo, then fitted to the model's input by predict.fit_image, as bin/predict fits a
user's image. Each plate is a pure function of (seed, index).
"""

import io
import math
import os
from typing import Callable, Sequence

import cairocffi
import numpy as np
from PIL import Image, ImageFilter

from plate_ocr.data import cairo_text, drawn_split, fonts, predict, records

SPLIT = "foreign"
LABELS_FROM = "test"  # it reads the first test labels: disjoint from training's
_STREAM = 16  # spawn key of its plates, apart from the splits' (0-5) and the label draw's
_MIN_INK = 11.0  # pixels of digit height, in the crop and in the fitted plate: legible
_REFERENCE_SIZE = 100.0  # the size the text is measured at, then scaled to fit
# Layouts: (probability, least crop height that keeps the digits legible, share of the box's
# height the digits fill): a tight crop, a box pasted on a page, small text in a box.
_LAYOUTS = {"tight": (0.4, 20, (0.6, 0.85)), "page": (0.4, 30, (0.5, 0.8)),
            "small": (0.2, 44, (0.28, 0.45))}
# (probability, box grey, ink grey): dark or grey digits on a light box, light on a dark one.
_POLARITIES = {"dark": (0.6, (165, 245), (0, 80)), "grey": (0.15, (190, 250), (70, 120)),
               "light": (0.25, (10, 90), (175, 255))}


def _box_path(context, left, top, right, bottom, radius):
    if radius <= 0:
        return context.rectangle(left, top, right - left, bottom - top)
    context.new_sub_path()
    for x, y, start in ((right - radius, top + radius, -90), (right - radius, bottom - radius, 0),
                        (left + radius, bottom - radius, 90), (left + radius, top + radius, 180)):
        context.arc(x, y, radius, math.radians(start), math.radians(start + 90))
    context.close_path()


def _fill(context, level, rng, top, bottom):
    # Light falling from above or below now and then, as on a photographed plate.
    shift = rng.uniform(-20, 20) if rng.random() < 0.3 else 0.0
    gradient = cairocffi.LinearGradient(0, top, 0, bottom)
    for stop, value in ((0, level + shift), (1, level - shift)):
        gradient.add_color_stop_rgb(stop, *[np.clip(value, 0, 255) / 255] * 3)
    context.set_source(gradient)
    context.fill()


def _text_size(context, text, box, share, spacing, scale):
    """Pixels per em at which the turned ink fills its share of the box and fits; room left."""
    xx, yx, xy, yy, _, _ = context.get_matrix().as_tuple()
    _, (left, top, right, bottom) = cairo_text.layout(context, text, spacing * _REFERENCE_SIZE)
    width, height = right - left, bottom - top
    # The shortest digit legible too (old-style figures: 1, 2 and 0 are x-height).
    shortest = min(context.text_extents(char)[3] for char in text)
    target = max((box[3] - box[1]) * share / height, _MIN_INK / (shortest * min(scale, 1.0)))
    spans = abs(xx) * width + abs(xy) * height, abs(yx) * width + abs(yy) * height
    room = box[2] - box[0] - 1, box[3] - box[1] - 1
    fit = min(target, room[0] / spans[0], room[1] / spans[1])
    return _REFERENCE_SIZE * fit, (room[0] - spans[0] * fit, room[1] - spans[1] * fit)


def draw_crop(text: str, font_path: str, rng: np.random.Generator, fit: tuple[int, int]
              ) -> tuple[Image.Image, float, float]:
    """One plate as a photo's crop: its own size and aspect, a box, a border, text, effects.

    Args:
      text, font_path, rng: the characters, the font file and the plate's generator.
      fit: (height, width) it will be fitted to: its digits stay legible there too.
    Returns:
      (grey crop, font size and letter spacing in pixels of the fitted plate).
    """
    layout = str(rng.choice(list(_LAYOUTS), p=[v[0] for v in _LAYOUTS.values()]))
    _, least, share = _LAYOUTS[layout]
    aspect = rng.uniform(2.0, 5.0)
    height = max(round(int(rng.integers(90, 301)) / aspect), least)
    width = round(height * aspect)
    scale = min(fit[0] / height, fit[1] / width)  # what fit_image will scale it by
    polarity = str(rng.choice(list(_POLARITIES), p=[v[0] for v in _POLARITIES.values()]))
    box_level, ink_level = (rng.uniform(*levels) for levels in _POLARITIES[polarity][1:])
    surface = cairocffi.ImageSurface(cairocffi.FORMAT_RGB24, width, height)
    context = cairocffi.Context(surface)
    box = [0.0, 0.0, float(width), float(height)]
    on_page = layout == "page" or (layout == "small" and rng.random() < 0.5)
    if on_page:  # its page 35-110 grey levels away, mostly darker than a light box
        box = [width * rng.uniform(0.03, 0.15), height * rng.uniform(0.06, 0.22),
               width * (1 - rng.uniform(0.03, 0.15)), height * (1 - rng.uniform(0.06, 0.22))]
        away = rng.uniform(35, 110) * (1 if (box_level < 128) == (rng.random() < 0.8) else -1)
        context.rectangle(0, 0, width, height)
        _fill(context, box_level + away if 0 <= box_level + away <= 255 else box_level - away,
              rng, 0, height)
    box_height = box[3] - box[1]
    pad, inset, line, radius = box_height * rng.uniform(0.02, 0.08), 0.0, 0.0, 0.0
    if rng.random() < 0.35:  # a thin border line in the ink's grey, rounded half the time
        line = rng.uniform(1.0, max(1.2, 0.05 * box_height))
        inset = rng.uniform(1.0, max(1.5, 0.06 * box_height)) + line / 2
        radius = box_height * rng.uniform(0.08, 0.3) if rng.random() < 0.5 else 0.0
        pad += inset + line / 2
    # A box on a page has the border's corners, one inset larger; a tight crop cuts them off.
    _box_path(context, *box, radius + inset if radius and on_page else 0.0)
    _fill(context, box_level, rng, box[1], box[3])
    context.set_source_rgb(*[ink_level / 255] * 3)
    if line:
        _box_path(context, box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset, radius)
        context.set_line_width(line)
        context.stroke()
    inner = [box[0] + pad + box_height * rng.uniform(0.0, 0.08), box[1] + pad,
             box[2] - pad - box_height * rng.uniform(0.0, 0.08), box[3] - pad]
    # Condensed or expanded text, letter spacing, a slight rotation and slant: Cairo's matrix.
    stretch = rng.uniform(0.72, 1.35) if rng.random() < 0.5 else 1.0
    spacing = rng.uniform(-0.02, 0.08) if rng.random() < 0.6 else rng.uniform(0.08, 0.35)
    angle = math.radians(rng.uniform(-4, 4)) if rng.random() < 0.6 else 0.0
    slant = rng.uniform(-0.15, 0.15) if rng.random() < 0.4 else 0.0
    context.transform(cairocffi.Matrix(xy=slant).multiply(cairocffi.Matrix.init_rotate(angle)))
    # Mostly outlines hinted otherwise than PIL's (cairo_text.HINT_STYLES); now and then no
    # antialiasing, as some software draws.
    font = {"stretch": stretch, "antialias": rng.random() >= 0.1,
            "hinting": str(rng.choice(["none", "slight", "full"], p=[0.4, 0.4, 0.2]))}
    cairo_text.set_font(context, font_path, _REFERENCE_SIZE, **font)
    size, slack = _text_size(context, text, inner, rng.uniform(*share), spacing, scale)
    spread = 0.8 if layout == "small" else 0.5  # small text anywhere, large text near the middle
    center = context.device_to_user(
        (inner[0] + inner[2]) / 2 + slack[0] * spread * rng.uniform(-0.5, 0.5),
        (inner[1] + inner[3]) / 2 + slack[1] * spread * rng.uniform(-0.5, 0.5))
    cairo_text.set_font(context, font_path, size, **font)
    pens, (left, top, right, bottom) = cairo_text.layout(context, text, spacing * size)
    for char, pen in zip(text, pens):
        context.move_to(center[0] + pen - (left + right) / 2, center[1] - (top + bottom) / 2)
        context.show_text(char)
    image = _effects(Image.fromarray(cairo_text.gray(surface)), bottom - top, rng)
    return image, size * scale, spacing * size * scale


def _effects(image: Image.Image, text_height: float, rng: np.random.Generator) -> Image.Image:
    # A camera's, on the crop; the blur in proportion to the digits, so none becomes a smudge.
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.015, 0.05) * text_height))
    if rng.random() < 0.4:
        noise = rng.normal(0, rng.uniform(2, 8), (image.height, image.width))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 76)))
        image = Image.open(buffer)
    return image


def usable_faces(font_dir: str, alphabet: str) -> tuple[list[fonts.Face], dict[str, str]]:
    """The verified foreign faces (fonts.usable_faces), of every foreign family in the manifest.

    Raises:
      fonts.FontError: a family is missing: the figures would not be comparable.
    """
    entries = fonts.read_manifest(os.path.join(font_dir, fonts.MANIFEST_NAME))
    families = {entry.family for entry in entries if entry.split == fonts.FOREIGN}
    return fonts.usable_faces(font_dir, alphabet, fonts.FOREIGN, len(families))


def render_foreign(numbers: Sequence[int], seed: int, alphabet: str, lengths: Sequence[int],
                   faces: Sequence[fonts.Face], height: int = 64, width: int = 128,
                   first_index: int = 0) -> tuple[np.ndarray, list[tuple]]:
    """Draws labels as foreign plates, each from its own generator: a family, a face, a crop.

    Args:
      numbers, alphabet, lengths: the label numbers and how they read (label_digits).
      seed, first_index: the dataset's seed and the split index of the first label.
      faces, height, width: the foreign faces (fonts.FOREIGN) and the plates' size.
    Returns:
      (uint8 [N, height, width], per plate (text, face, font size, spacing) in plate pixels).
    """
    families = fonts.group_by_family(faces)
    images, details = np.zeros((len(numbers), height, width), np.uint8), []
    for offset, number in enumerate(numbers):
        key = (_STREAM, first_index + offset)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
        family = families[int(rng.integers(len(families)))]
        face = family[int(rng.integers(len(family)))]
        text = "".join(alphabet[d] for d in records.label_digits(number, alphabet, lengths))
        crop, size, spacing = draw_crop(text, face.path, rng, (height, width))
        images[offset] = predict.fit_image(crop, height, width)
        details.append((text, face, round(size), round(spacing)))
    return images, details


def add_split(records_dir: str, info: dict, numbers: Sequence[int], faces: Sequence[fonts.Face],
              num_shards: int, on_progress: Callable[[int], None] = lambda n: None) -> dict:
    """Writes the foreign split into a finished dataset and lists it in its dataset_info.json.

    Args:
      records_dir, info: the dataset and its metadata, just written.
      numbers, faces: the plates' labels (the first LABELS_FROM ones, 1 or more) and faces.
      num_shards, on_progress: shards of the split (at most one per plate); called with each
        number of plates written.
    Returns:
      the metadata written, with the split and its faces (drawn_split.add_split).
    """
    def draw(chunk: Sequence[int], first_index: int):
        images, details = render_foreign(
            chunk, info["seed"], info["alphabet"], records.plate_lengths(info), faces,
            info["image_height"], info["image_width"], first_index)
        return images, [(text, face.name, size, spacing) for text, face, size, spacing in details]
    return drawn_split.add_split(
        records_dir, info, SPLIT, numbers, draw, num_shards,
        [{"name": f.name, "family": f.family, "file": os.path.basename(f.path)} for f in faces],
        f"cairo {cairocffi.cairo_version_string()}", LABELS_FROM, on_progress)
