"""render.py: plate shape, determinism, ink kept inside the frame, spacing fitted to the plate."""

import numpy as np
import pytest

from plate_ocr.data import fonts, render, writer

STYLE = writer.PlateStyle()
SPEC = STYLE.spec
AVAILABLE = SPEC.width - 2 * SPEC.margin


class _ExtremeRng:
    """Stands in for the plate's generator: always the lowest or the highest position."""

    def __init__(self, highest: bool):
        self.highest = highest

    def integers(self, low: int, high: int) -> int:
        return high - 1 if self.highest else low


def _widest_text(face: fonts.Face, size: int) -> list[render.Glyph]:
    glyphs = render.load_glyphs(face.path, size, STYLE.alphabet)
    widest = max(glyphs.values(), key=lambda g: g.advance + g.ink.shape[1])
    return [widest] * STYLE.plate_length


def _ink_columns(image: np.ndarray) -> int:
    columns = np.flatnonzero((image < 255).any(axis=0))
    return int(columns[-1] - columns[0] + 1)


def _assert_ink_inside_frame(image: np.ndarray, where: str) -> None:
    m = SPEC.margin
    border = np.concatenate([image[:m].ravel(), image[-m:].ravel(),
                             image[:, :m].ravel(), image[:, -m:].ravel()])
    assert (border == 255).all(), f"ink in the {m}-pixel margin: {where}"
    assert image.min() < 128, f"no dark ink: {where}"


def _box_glyph(width: int = 10, advance: float = 12.0) -> render.Glyph:
    return render.Glyph(np.full((10, width), 255, np.uint8), 0, -10, advance)


def test_make_plate_shape_dtype_and_range(faces):
    families = fonts.group_by_family(faces["train"])
    image, digits, text, face, size, spacing = writer.make_plate(
        12345, families, STYLE, writer.plate_rng(0, "train", 0))
    assert image.shape == (64, 128) and image.dtype == np.uint8
    assert image.max() == 255 and image.min() < 128  # light plate, dark ink
    assert (digits, text) == ([1, 2, 3, 4, 5], "12345")
    assert face in faces["train"]
    assert STYLE.font_size_min <= size <= STYLE.font_size_max
    assert STYLE.spacing_min <= spacing <= STYLE.spacing_max


def test_make_plate_leading_zeros_are_kept(faces):
    families = fonts.group_by_family(faces["train"])
    _, digits, text, *_ = writer.make_plate(42, families, STYLE, writer.plate_rng(0, "val", 3))
    assert (digits, text) == ([0, 0, 0, 4, 2], "00042")


def test_plate_is_a_function_of_seed_split_and_index(faces):
    families = fonts.group_by_family(faces["train"])

    def plate(seed, split, index):
        image, *rest = writer.make_plate(777, families, STYLE, writer.plate_rng(seed, split, index))
        return image, rest

    image, rest = plate(0, "train", 5)
    again, rest_again = plate(0, "train", 5)
    np.testing.assert_array_equal(image, again)
    assert rest == rest_again
    for other in (plate(0, "train", 6), plate(0, "val", 5), plate(1, "train", 5)):
        assert not np.array_equal(image, other[0])


@pytest.mark.parametrize("size", [STYLE.font_size_min, STYLE.font_size_max])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_face_keeps_ink_inside_the_frame(faces, split, size):
    for face in faces[split]:
        glyphs = _widest_text(face, size)
        for highest in (False, True):
            image, spacing = render.render_plate(glyphs, STYLE.spacing_max, SPEC,
                                                 _ExtremeRng(highest))
            _assert_ink_inside_frame(image, f"{face.name} size {size}")
            # The default spacing fits every face: nothing is squeezed.
            assert spacing == STYLE.spacing_max, face.name


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_wide_spacing_is_reduced_to_the_largest_that_fits(faces, split):
    wide = 2 * STYLE.spacing_max
    size = STYLE.font_size_max
    reduced = 0
    for face in faces[split]:
        glyphs = _widest_text(face, size)
        image, spacing = render.render_plate(glyphs, wide, SPEC, _ExtremeRng(True))
        _assert_ink_inside_frame(image, f"{face.name} size {size} spacing {wide}")
        assert spacing <= wide
        if spacing < wide:
            reduced += 1
            # One more pixel of spacing, on a plate wide enough, would overflow the frame.
            roomy = render.PlateSpec(width=4 * SPEC.width)
            looser, used = render.render_plate(glyphs, spacing + 1, roomy, _ExtremeRng(False))
            assert used == spacing + 1 and _ink_columns(looser) > AVAILABLE, face.name
    assert reduced > len(faces[split]) // 2  # the case is really exercised


def test_fit_spacing_keeps_a_spacing_that_fits():
    glyphs = [_box_glyph()] * 5  # ink extent: 4 * (12 + spacing) + 10
    assert render.fit_spacing(glyphs, 2, 70) == 2
    assert render.fit_spacing(glyphs, 3, 70) == 3


def test_fit_spacing_reduces_to_the_largest_that_fits():
    glyphs = [_box_glyph()] * 5
    assert render.fit_spacing(glyphs, 8, 70) == 3
    assert render.fit_spacing(glyphs, 30, 58) == 0
    assert render.fit_spacing(glyphs, 8, 50) == -2  # glyph boxes may overlap
    fractional = [_box_glyph(advance=12.5)] * 5
    spacing = render.fit_spacing(fractional, 8, 70)
    assert spacing == 2  # pens at 0, 14.5, 29, 43.5, 58 round to an extent of 68 <= 70


def test_fit_spacing_raises_when_touching_glyphs_do_not_fit():
    with pytest.raises(ValueError, match="5 glyphs do not fit in 9 pixels"):
        render.fit_spacing([_box_glyph()] * 5, 0, 9)


def test_render_plate_raises_when_glyphs_are_too_tall():
    tall = render.Glyph(np.full((70, 10), 255, np.uint8), 0, -70, 12.0)
    with pytest.raises(ValueError, match="do not fit a 64-pixel plate"):
        render.render_plate([tall] * 5, 0, SPEC, np.random.default_rng(0))


def test_load_glyphs_trims_ink_and_caches(faces):
    path = faces["train"][0].path
    glyphs = render.load_glyphs(path, 20, STYLE.alphabet)
    assert render.load_glyphs(path, 20, STYLE.alphabet) is glyphs
    assert set(glyphs) == set(STYLE.alphabet)
    for glyph in glyphs.values():
        ink = glyph.ink
        assert ink.dtype == np.uint8 and ink.any(axis=0)[[0, -1]].all()
        assert ink.any(axis=1)[[0, -1]].all() and glyph.top < 0 < glyph.advance
