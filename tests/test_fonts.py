"""fonts.py: the manifest, face verification and the one-line errors of a short font set."""

import os
import shutil

import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

from plate_ocr.data import fonts

ALPHABET = "0123456789"


def _box(width: int, height: int = 700):
    pen = TTGlyphPen(None)
    pen.moveTo((50, 0))
    pen.lineTo((50, height))
    pen.lineTo((50 + width, height))
    pen.lineTo((50 + width, 0))
    pen.closePath()
    return pen.glyph()


def _build_font(path: str, digit_glyphs: dict[str, str], notdef_ink: bool) -> str:
    """A TrueType font with a letter, optional digits (char -> glyph name) and a .notdef."""
    shapes = {".notdef": _box(500) if notdef_ink else TTGlyphPen(None).glyph(), "A": _box(400)}
    # Digit glyphs differ in width, so a real font with them passes verification.
    digit_names = sorted(set(digit_glyphs.values()))
    shapes.update({name: _box(100 + 40 * i) for i, name in enumerate(digit_names)})
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(list(shapes))
    builder.setupCharacterMap({ord("A"): "A", **{ord(c): name for c, name in digit_glyphs.items()}})
    builder.setupGlyf(shapes)
    builder.setupHorizontalMetrics({name: (700, 50) for name in shapes})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Test Face", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(path)
    return path


def test_manifest_rows_are_complete(font_dir):
    entries = fonts.read_manifest(os.path.join(font_dir, fonts.MANIFEST_NAME))
    assert len(entries) > 200
    assert len({e.file for e in entries}) == len(entries)
    assert {e.split for e in entries} == {fonts.TRAIN, fonts.HELDOUT, fonts.FOREIGN}
    assert all(e.source.split(":")[0] in ("debian", "python") for e in entries)
    assert all(e.family and e.style and e.origin for e in entries)
    assert "fonts-dejavu-core" in fonts.debian_packages(entries)


def test_train_and_heldout_families_are_present_verified_and_disjoint(font_dir):
    train, train_rejected = fonts.usable_faces(font_dir, ALPHABET, fonts.TRAIN, 22)
    heldout, heldout_rejected = fonts.usable_faces(font_dir, ALPHABET, fonts.HELDOUT, 4)
    assert train_rejected == {} and heldout_rejected == {}
    train_families = {face.family for face in train}
    heldout_families = {face.family for face in heldout}
    assert len(train_families) >= 22
    assert len(heldout_families) >= 4
    assert not train_families & heldout_families
    entries = fonts.read_manifest(os.path.join(font_dir, fonts.MANIFEST_NAME))
    manifest_train = {e.family for e in entries if e.split == fonts.TRAIN}
    manifest_heldout = {e.family for e in entries if e.split == fonts.HELDOUT}
    assert not manifest_train & manifest_heldout


def test_group_by_family_sorts_families(font_dir):
    train, _ = fonts.usable_faces(font_dir, ALPHABET, fonts.TRAIN, 22)
    groups = fonts.group_by_family(train)
    families = [group[0].family for group in groups]
    assert families == sorted(set(families))
    assert all(len({face.family for face in group}) == 1 for group in groups)
    assert sum(len(group) for group in groups) == len(train)


def test_verify_face_accepts_a_built_font_with_ten_distinct_digits(tmp_path):
    path = _build_font(str(tmp_path / "digits.ttf"), {c: f"digit{c}" for c in ALPHABET}, True)
    assert fonts.verify_face(path, ALPHABET) is None


def test_verify_face_rejects_a_font_without_digits(tmp_path):
    boxed = _build_font(str(tmp_path / "boxed.ttf"), {}, notdef_ink=True)
    blank = _build_font(str(tmp_path / "blank.ttf"), {}, notdef_ink=False)
    assert fonts.verify_face(boxed, ALPHABET) == (
        "has no glyph for '0' (draws the missing-glyph box)")
    assert fonts.verify_face(blank, ALPHABET) == "draws no ink for '0'"


def test_verify_face_rejects_digits_that_draw_alike(tmp_path):
    path = _build_font(str(tmp_path / "alike.ttf"), {c: "digit" for c in ALPHABET}, True)
    assert fonts.verify_face(path, ALPHABET) == "draws '0' and '1' alike"


def test_verify_face_rejects_files_that_are_not_fonts(tmp_path, font_dir):
    garbage = tmp_path / "garbage.ttf"
    garbage.write_bytes(b"not a font" * 100)
    truncated = tmp_path / "truncated.ttf"
    with open(os.path.join(font_dir, "DejaVuSans.ttf"), "rb") as f:
        truncated.write_bytes(f.read(4096))
    # Named like an installed font: PIL, given this path, would open the system copy instead.
    system_named = tmp_path / "DejaVuSans.ttf"
    system_named.write_bytes(b"not a font")
    for path in (garbage, truncated, system_named, tmp_path / "absent.ttf"):
        assert fonts.verify_face(str(path), ALPHABET).startswith("cannot be opened (")


def test_usable_faces_names_the_fix_when_fonts_are_not_gathered(tmp_path, font_dir):
    shutil.copy(os.path.join(font_dir, fonts.MANIFEST_NAME), tmp_path)
    with pytest.raises(fonts.FontError) as raised:
        fonts.usable_faces(str(tmp_path), ALPHABET, fonts.TRAIN, 22)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"only 0 usable train font families in {tmp_path} (need 22)")
    assert "bin/setup" in message and "apt-get install -y fonts-" in message


def test_usable_faces_counts_rejected_faces_as_missing(tmp_path, font_dir):
    shutil.copy(os.path.join(font_dir, fonts.MANIFEST_NAME), tmp_path)
    (tmp_path / "DejaVuSans.ttf").write_bytes(b"not a font")
    faces, rejected = fonts.usable_faces(str(tmp_path), ALPHABET, fonts.TRAIN, 0)
    assert faces == []
    assert rejected["DejaVuSans.ttf"].startswith("cannot be opened")
    assert rejected["Arimo-Bold.ttf"] == "not gathered"


def test_usable_faces_without_a_manifest_says_to_run_setup(tmp_path):
    with pytest.raises(fonts.FontError, match=r"no font manifest at .*run bin/setup"):
        fonts.usable_faces(str(tmp_path), ALPHABET, fonts.TRAIN, 1)
