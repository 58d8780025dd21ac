"""Find, verify and list the font faces in fonts/: the manifest says where each comes from."""

import collections
import dataclasses
import importlib.util
import os
import shutil
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MANIFEST_NAME = "manifest.tsv"
TRAIN = "train"
HELDOUT = "heldout"
FOREIGN = "foreign"  # families only the foreign split draws, with Cairo (foreign.py)
# A code point no text font maps: what it draws is the face's missing-glyph box (.notdef).
_MISSING_CHAR = "\U000F0000"
_VERIFY_SIZE = 24


class FontError(Exception):
    """The font set cannot serve: the message is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class FontEntry:
    """One manifest row: a face file, its family and where the file comes from."""

    file: str
    family: str
    style: str
    split: str
    source: str  # "debian:<package>" or "python:<package>"
    origin: str  # installed path (debian) or path inside the Python package


@dataclasses.dataclass(frozen=True)
class Face:
    """A verified face in the font dir."""

    path: str
    family: str
    style: str

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


def read_manifest(path: str) -> list[FontEntry]:
    """Reads the tab-separated manifest (header row, `#` comments)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    header = lines[0].split("\t")
    return [FontEntry(**dict(zip(header, line.split("\t")))) for line in lines[1:]]


def debian_packages(entries: Iterable[FontEntry]) -> list[str]:
    """The Debian packages the manifest's faces come from, sorted."""
    return sorted({e.source.split(":", 1)[1] for e in entries if e.source.startswith("debian:")})


def _origin_path(entry: FontEntry) -> str:
    kind, package = entry.source.split(":", 1)
    if kind == "debian":
        return entry.origin
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return os.path.join("<python package %s not installed>" % package, entry.origin)
    return os.path.join(os.path.dirname(spec.origin), entry.origin)


def gather(entries: Sequence[FontEntry], font_dir: str) -> list[FontEntry]:
    """Copies every manifest face into font_dir; returns the entries whose source is missing."""
    os.makedirs(font_dir, exist_ok=True)
    missing = []
    for entry in entries:
        target = os.path.join(font_dir, entry.file)
        origin = _origin_path(entry)
        if os.path.exists(target):
            continue
        if not os.path.exists(origin):
            missing.append(entry)
            continue
        shutil.copyfile(origin, target + ".tmp")
        os.replace(target + ".tmp", target)
    return missing


def _draw(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    image = Image.new("L", (3 * _VERIFY_SIZE, 3 * _VERIFY_SIZE), 0)
    ImageDraw.Draw(image).text((_VERIFY_SIZE, _VERIFY_SIZE), char, fill=255, font=font)
    return np.asarray(image)


def verify_face(path: str, alphabet: str) -> str | None:
    """Checks that every character of the alphabet draws a real, distinct glyph.

    Returns:
      None when the face is usable, else a short reason.
    """
    try:
        # A file, not a path: given a path it cannot load, PIL silently opens a system font of
        # the same file name instead, and a corrupt copy in fonts/ would pass.
        with open(path, "rb") as f:
            font = ImageFont.truetype(f, _VERIFY_SIZE)
    except OSError as error:
        return f"cannot be opened ({error})"
    missing_box = _draw(font, _MISSING_CHAR)
    bitmaps = {}
    for char in alphabet:
        bitmap = _draw(font, char)
        if not bitmap.any():
            return f"draws no ink for {char!r}"
        if missing_box.any() and np.array_equal(bitmap, missing_box):
            return f"has no glyph for {char!r} (draws the missing-glyph box)"
        bitmaps[char] = bitmap
    for i, a in enumerate(alphabet):
        for b in alphabet[i + 1:]:
            if np.array_equal(bitmaps[a], bitmaps[b]):
                return f"draws {a!r} and {b!r} alike"
    return None


def usable_faces(font_dir: str, alphabet: str, split: str,
                 min_families: int) -> tuple[list[Face], dict[str, str]]:
    """Lists the verified faces of one manifest split that are present in font_dir.

    Args:
      font_dir: the folder with the manifest and the gathered font files.
      alphabet: the characters every face must draw.
      split: TRAIN, HELDOUT or FOREIGN.
      min_families: fewer usable families than this is an error.
    Returns:
      (faces sorted by file name, {file: reason} for faces left out).
    Raises:
      FontError: with a one-line message naming what is missing and how to get it.
    """
    manifest = os.path.join(font_dir, MANIFEST_NAME)
    if not os.path.exists(manifest):
        raise FontError(f"no font manifest at {manifest}: --font_dir must be the project's fonts/ "
                        "folder (run bin/setup to fill it)")
    entries = [e for e in read_manifest(manifest) if e.split == split]
    faces, rejected = [], {}
    for entry in sorted(entries, key=lambda e: e.file):
        path = os.path.join(font_dir, entry.file)
        reason = verify_face(path, alphabet) if os.path.exists(path) else "not gathered"
        if reason is None:
            faces.append(Face(path, entry.family, entry.style))
        else:
            rejected[entry.file] = reason
    families = {face.family for face in faces}
    if len(families) < min_families:
        absent = [e for e in entries if e.family not in families]
        packages = debian_packages(absent)
        hint = ("run bin/setup (or: apt-get install -y " + " ".join(packages) + ")"
                if packages else "run bin/setup")
        raise FontError(f"only {len(families)} usable {split} font families in {font_dir} "
                        f"(need {min_families}); missing: "
                        f"{', '.join(sorted({e.family for e in absent})[:8]) or 'none listed'}; {hint}")
    return faces, rejected


def group_by_family(faces: Sequence[Face]) -> list[list[Face]]:
    """Faces grouped by family, families sorted by name: plates pick a family, then a face."""
    groups = collections.defaultdict(list)
    for face in faces:
        groups[face.family].append(face)
    return [groups[family] for family in sorted(groups)]
