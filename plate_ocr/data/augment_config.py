"""What augment.py does to a plate: each effect's probability and range, without TensorFlow.

The records' metadata, make_records' --aug_* flags and the writer's plate style hold an
AugmentConfig; only the processes that augment import the effects themselves (augment.py).
"""

import dataclasses


# The turn of a label's position past a shorter plate's end (AugmentConfig.turn_ways): no
# character, so not counted among the plate's characters.
NO_CHARACTER = 2


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (`*_prob`) and ranges of each effect; all zero probabilities: clean."""

    # Text height times 2^u, u uniform in [log2 scale_min, log2 scale_max] (then shrunk to fit):
    # the records' digits are 13-18 px high; plates cropped by a detector or another
    # renderer's tight crop show 8-45. With these values 29% of training plates have text
    # 28-40 px high, as trdg's frame-filling crops do (19% up to 3x on 70% of plates; run x1
    # in docs/experiments.md: trdg read 93% against 88-91%).
    scale_prob: float = 0.85
    scale_min: float = 0.65
    scale_max: float = 5.0
    # Text scaled up keeps crisp edges, as another renderer's large text has: bilinear scaling
    # widens each edge's one-pixel ramp of grey to `scale` pixels, so on these plates the
    # ramp is steepened back by the scale (run s1 in docs/experiments.md: trdg read 94.0%
    # against 91.2%, captcha 46% against 38.5%, at fixed steps, one run each).
    sharpen_prob: float = 0.8
    squeeze_prob: float = 0.5  # text scaled wider than the frame condensed to fit (to 0.7)
    stretch_prob: float = 0.3
    stretch: float = 0.3  # width times 1/(1 + s) .. 1 + s: condensed and extended faces
    rotate_prob: float = 0.5
    rotate_degrees: float = 6.0  # up to this, either way
    shear_prob: float = 0.4
    shear: float = 0.3  # horizontal shear factor, either way (italic-like slant)
    perspective_prob: float = 0.3
    # Corner displacement as a fraction of the ink box's height, each way: the far end of
    # the digits at least (1 - 2x) / (1 + 2x) the height of the near end (2/3 at 0.1).
    perspective: float = 0.1
    position_prob: float = 0.6  # the text anywhere it fits, not where the renderer put it
    # A smooth random displacement of the clean ink (cells of ~6 px, nothing leaves the
    # frame): each glyph bent, shifted and thickened a little its own way, shapes no font has.
    elastic_prob: float = 0.25
    elastic: float = 1.2  # the displacement's standard deviation, up to this many pixels
    # Each character its own way (the runs of inked columns: a character, or two that touch):
    # turned, resized, its baseline and place moved, as captchas, hand lettering and sloppy
    # renderers draw them; the whole line then shrunk to fit the frame. At 4,200 steps (run G5
    # in docs/experiments.md) the captcha split read 62.6% against 42.1% without it, the
    # plate-like outside sets 0.7 points less on average.
    glyph_prob: float = 0.5
    glyph_rotate_degrees: float = 25.0  # each character up to this, either way
    glyph_scale: float = 0.25  # each character's size times 1/(1 + s) .. 1 + s
    glyph_shift: float = 0.12  # up to this many text heights up or down, character widths across
    # Characters turned one way only, as far as the others: turned the other way they read as
    # another character (a 1 with a long flag turned clockwise is a 7; a 7 turned
    # anticlockwise is such a 1). Turned either way, trdg's long-flagged 1s read as 7s: 27
    # of run F8's 73 misreads of trdg1k were 1->7, 12 more 7->1. At 4,200 steps (run W in
    # docs/experiments.md, against G5): trdg1k misreads that only swap 1s and 7s 17 against
    # 24, foreign 96.45% against 95.15%, the plate-like outside sets +0.5 points on
    # average, captcha 59.7% against 62.6%.
    glyph_clockwise: str = "7"
    glyph_anticlockwise: str = "1"
    stroke_prob: float = 0.3  # thicken or thin the strokes by about a pixel (half each side)
    # Holes in the ink: worn paint, distressed faces. Off by default: with it (and a larger
    # clean share) run e4 read no more of the trdg probe and less of foreign and captcha.
    wear_prob: float = 0.0
    # The plate a box around the text, padded by box_pad_min .. box_pad_max text heights, on a
    # page of another grey (at least 40 levels apart); otherwise the box is the whole image.
    box_prob: float = 0.5
    box_pad_min: float = 0.1
    box_pad_max: float = 0.8
    contrast_prob: float = 0.7  # box and ink grey levels drawn from the ranges below
    background_min: int = 150
    ink_max: int = 100
    # Grey levels the box keeps above the ink as its strokes show after the blur, everywhere:
    # gradient and texture darken it no further, and thin or blurred strokes get darker ink
    # on a lighter box.
    min_contrast: float = 50.0
    gradient_prob: float = 0.4
    gradient: float = 60.0  # grey levels across the plate
    texture_prob: float = 0.3
    texture: float = 25.0  # grey levels of low-frequency texture
    pattern_prob: float = 0.15  # interfering waves over the plate (security prints, moiré)
    pattern: float = 35.0  # grey levels, the waves' standard deviation
    border_prob: float = 0.3  # a line of the ink's level along the inside of the box's edge
    screws_prob: float = 0.15  # two screw heads between the box's ends and the text
    strip_prob: float = 0.1  # a dark band at the box's left end (as the EU strip)
    clutter_prob: float = 0.25  # a block of another grey on the page, off the text
    speckle_prob: float = 0.1  # dots of the ink's level scattered over the plate
    scratch_prob: float = 0.1  # a thin wavy line of the ink's level across the text
    invert_prob: float = 0.15  # light digits on a dark box
    blur_prob: float = 0.4
    blur_sigma: float = 1.2  # Gaussian, 0.4 .. this
    motion_prob: float = 0.1
    motion: float = 5.0  # horizontal motion blur, up to this many pixels
    resample_prob: float = 0.2  # averaged to 1/2 or 1/3 of its size and back: a low-res crop
    noise_prob: float = 0.5
    noise_sigma: float = 14.0
    jpeg_prob: float = 0.3
    jpeg_quality_min: int = 25

    def turn_ways(self, alphabet: str) -> tuple[int, ...]:
        """Each character's turns, by alphabet index: 1 clockwise only, -1 anticlockwise
        only, 0 either way; then NO_CHARACTER, the last entry, which a label's PAD (-1: past
        the end of a plate shorter than the longest) indexes."""
        return tuple(int(char in self.glyph_clockwise) - int(char in self.glyph_anticlockwise)
                     for char in alphabet) + (NO_CHARACTER,)


CLEAN = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)
                         if f.name.endswith("_prob")})
