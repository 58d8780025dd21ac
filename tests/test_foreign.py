"""foreign.py and cairo_text.py: Cairo's plates, their fonts, and the split make_records writes."""

import hashlib
import os
import subprocess

import numpy as np
import pytest
from fontTools.ttLib import TTFont

from conftest import ALPHABET, PROJECT_DIR
from plate_ocr.data import cairo_text, fonts, foreign, records, render

NUMBERS = [37463, 0, 99999, 12345, 70801, 4, 55555, 31337, 80008, 2718, 16180, 42]


@pytest.fixture(scope="module")
def foreign_faces(font_dir) -> list[fonts.Face]:
    faces, rejected = foreign.usable_faces(font_dir, ALPHABET)
    assert rejected == {}
    return faces


def test_plates_shape_dtype_and_text(foreign_faces):
    images, details = foreign.render_foreign(NUMBERS, 0, ALPHABET, [5], foreign_faces)
    assert images.shape == (len(NUMBERS), 64, 128) and images.dtype == np.uint8
    assert [text for text, _, _, _ in details] == [f"{n:05d}" for n in NUMBERS]
    assert all(face in foreign_faces and size > 0 for _, face, size, _ in details)
    small, _ = foreign.render_foreign(NUMBERS[:2], 0, "0123456789ab", [3], foreign_faces, 32, 96)
    assert small.shape == (2, 32, 96)


def test_a_plate_is_a_function_of_seed_and_index(foreign_faces):
    images, _ = foreign.render_foreign(NUMBERS, 0, ALPHABET, [5], foreign_faces)
    again, _ = foreign.render_foreign(NUMBERS, 0, ALPHABET, [5], foreign_faces)
    assert images.tobytes() == again.tobytes()
    middle, _ = foreign.render_foreign(NUMBERS[4:9], 0, ALPHABET, [5], foreign_faces,
                                       first_index=4)
    assert middle.tobytes() == images[4:9].tobytes()
    other, _ = foreign.render_foreign(NUMBERS, 1, ALPHABET, [5], foreign_faces)
    assert all(not np.array_equal(a, b) for a, b in zip(images, other))


def _pil_and_cairo(path: str, size: int, text: str, hinting: str, antialias: bool = True):
    """The same text, font file and size by PIL's renderer and by Cairo, pens at the same
    whole pixels, in a frame that leaves render_plate no position to draw."""
    glyphs = [render.load_glyphs(path, size, ALPHABET)[char] for char in text]
    offsets = render._ink_offsets(glyphs, 0)
    left, right = min(offsets), max(o + g.ink.shape[1] for o, g in zip(offsets, glyphs))
    top, bottom = min(g.top for g in glyphs), max(g.top + g.ink.shape[0] for g in glyphs)
    spec = render.PlateSpec(bottom - top + 8, right - left + 8, margin=4)
    pil, _ = render.render_plate(glyphs, 0, spec, np.random.default_rng(0))
    cairo = cairo_text.draw_text(text, path, size, spec.height, spec.width,
                                 (4 - left, 4 - top), hinting, antialias)
    return 255 - pil.astype(int), 255 - cairo.astype(int)


def _ink_box(ink: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(ink.max(axis=1) > 64), np.flatnonzero(ink.max(axis=0) > 64)
    return [rows[0], rows[-1], cols[0], cols[-1]]


# TrueType faces of training and of the foreign split: hinting changes their pixels.
@pytest.mark.parametrize("file", ["DejaVuSans.ttf", "Roboto-Regular.ttf", "Lato-Regular.ttf",
                                  "CharisSIL-Bold.ttf"])
@pytest.mark.parametrize("size", [18, 25])
def test_cairo_draws_other_pixels_than_pil(font_dir, file, size):
    # Both rasterize with FreeType, and Cairo's full hinting at whole-pixel pens gives PIL's
    # very pixels: so the split draws most text unhinted or slightly hinted (and at fractional
    # sizes, through its matrix, sometimes aliased), as other software does.
    path = os.path.join(font_dir, file)
    pil, unhinted = _pil_and_cairo(path, size, "37463", "none")
    assert pil.sum() > 0 and unhinted.sum() > 0
    # The same glyphs at the same place: the ink agrees in amount and box...
    assert abs(unhinted.sum() / pil.sum() - 1) < 0.15
    assert np.abs(np.subtract(_ink_box(pil), _ink_box(unhinted))).max() <= 1
    # ... not in pixels.
    difference = np.abs(pil - unhinted)
    assert difference.mean() > 2 and (difference > 64).mean() > 0.01, difference.mean()


# CFF faces (most .otf files) too: FreeType's CFF engine draws them alike hinted or not.
@pytest.mark.parametrize("file", ["DejaVuSans.ttf", "Inter-Bold.otf", "BebasNeue-Regular.otf"])
def test_cairo_draws_aliased_text_that_pil_never_does(font_dir, file):
    pil, aliased = _pil_and_cairo(os.path.join(font_dir, file), 22, "37463", "full", False)
    assert set(np.unique(aliased)) == {0, 255} and len(np.unique(pil)) > 20
    assert abs(aliased.sum() / pil.sum() - 1) < 0.15


def test_every_plate_has_ink_and_a_readable_contrast(foreign_faces):
    numbers = np.random.default_rng(0).choice(100000, 300, replace=False)
    images, _ = foreign.render_foreign(numbers, 0, ALPHABET, [5], foreign_faces)
    flat = images.reshape(len(images), -1).astype(int)
    spread = np.percentile(flat, 99.5, axis=1) - np.percentile(flat, 0.5, axis=1)
    ink = (np.abs(flat - np.median(flat, axis=1, keepdims=True)) >= 30).mean(axis=1)
    assert spread.min() >= 40 and ink.min() >= 0.01, (spread.min(), ink.min())
    # Light digits on dark plates and dark ones on light plates, not one polarity.
    background = np.median(flat, axis=1)
    assert (background < 100).mean() > 0.1 and (background > 150).mean() > 0.5


def test_crops_have_their_own_sizes_and_aspects(foreign_faces):
    crops = [foreign.draw_crop("37463", foreign_faces[0].path,
                               np.random.default_rng(seed), (64, 128))[0] for seed in range(120)]
    widths = np.array([crop.width for crop in crops])
    aspects = widths / np.array([crop.height for crop in crops])
    assert widths.min() < 110 and widths.max() > 270
    assert aspects.min() < 2.3 and aspects.max() > 4.5


def _name_families(path: str) -> set[str]:
    names = TTFont(path, lazy=True)["name"]
    return {str(record) for record in names.names if record.nameID in (1, 16)}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_foreign_families_are_disjoint_from_training_and_heldout(font_dir, faces, foreign_faces):
    entries = fonts.read_manifest(os.path.join(font_dir, fonts.MANIFEST_NAME))
    by_split = {split: [e for e in entries if e.split == split]
                for split in (fonts.TRAIN, fonts.HELDOUT, fonts.FOREIGN)}
    assert len({face.family for face in foreign_faces}) >= 8
    assert {face.family for face in foreign_faces} == {e.family for e in by_split[fonts.FOREIGN]}
    seen = faces["train"] + faces["heldout"]
    # Disjoint by the manifest's families and packages (no clone packages such as texgyre or
    # cmu either), by the families the files name themselves, and by the files' bytes.
    seen_entries = by_split[fonts.TRAIN] + by_split[fonts.HELDOUT]
    assert not {e.family for e in seen_entries} & {e.family for e in by_split[fonts.FOREIGN]}
    packages = set(fonts.debian_packages(by_split[fonts.FOREIGN]))
    assert not packages & set(fonts.debian_packages(seen_entries))
    assert not {p for p in packages if "texgyre" in p or p == "fonts-cmu"}
    seen_names = set().union(*(_name_families(face.path) for face in seen))
    for face in foreign_faces:
        assert not _name_families(face.path) & seen_names, face.name
    assert not {_sha256(f.path) for f in foreign_faces} & {_sha256(f.path) for f in seen}


def test_a_failed_split_leaves_no_finished_looking_dataset(tmp_path, foreign_faces,
                                                          monkeypatch):
    records.write_info(str(tmp_path), {"seed": 0, "alphabet": ALPHABET, "plate_length": 5,
                                       "image_height": 64, "image_width": 128,
                                       "splits": {}, "fonts": {}})
    render_foreign, written = foreign.render_foreign, []

    def full_disk_in_the_second_shard(numbers, *args):
        if args[-1] >= 20:  # first_index: the second of two shards of 20
            written.extend(name for name in os.listdir(tmp_path) if name.startswith("plates-"))
            raise OSError(28, "No space left on device")
        return render_foreign(numbers, *args)
    monkeypatch.setattr(foreign, "render_foreign", full_disk_in_the_second_shard)
    with pytest.raises(OSError, match="No space"):
        foreign.add_split(str(tmp_path), records.read_info(str(tmp_path)), list(range(40)),
                          foreign_faces, 2)
    assert written == ["plates-foreign.tfrecord-00000-of-00002"]  # the first shard was whole
    # Then no metadata, no temporary, no whole shard: the writer's clear_output, as after its own.
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_make_records_writes_a_foreign_split_that_evaluate_reads(tmp_path, font_dir):
    from plate_ocr.serving import evaluate
    from plate_ocr.training import input_pipeline
    output_dir = str(tmp_path / "records")
    result = subprocess.run(
        [os.path.join(PROJECT_DIR, "bin", "make_records"), "--output_dir", output_dir,
         "--num_train", "60", "--num_val", "10", "--num_test", "30", "--num_heldout", "0",
         "--num_test_aug", "0", "--num_val_aug", "0", "--num_foreign", "12", "--num_captcha", "0",
         "--shards", "1", "--eval_shards", "2", "--workers", "0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "foreign 12, captcha 0)" in result.stdout
    info = records.read_info(output_dir)
    split = info["splits"][foreign.SPLIT]
    assert split["num_examples"] == 12 and len(split["shards"]) == 2
    assert info["flags"]["num_foreign"] == 12
    for shard in split["shards"]:
        assert _sha256(os.path.join(output_dir, shard["name"])) == shard["sha256"]
    assert input_pipeline.check_shards(info, output_dir, foreign.SPLIT) == {}
    plates = list(evaluate.read_split(output_dir, foreign.SPLIT, batch_size=5))
    test = list(evaluate.read_split(output_dir, "test"))
    texts = sum((batch["text"] for batch in plates), [])
    assert texts == sum((batch["text"] for batch in test), [])[:12]
    assert sum(len(batch["image"]) for batch in plates) == 12
    assert plates[0]["image"].shape[1:] == (64, 128)
    names = {face["name"] for face in info["fonts"][foreign.SPLIT]}
    assert set(sum((batch["font"] for batch in plates), [])) <= names
