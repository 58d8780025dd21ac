"""Cairo text from a font file: load the face, measure a line, draw it.

Cairo and FreeType rasterize here, not PIL: the foreign split (foreign.py) is drawn with them.
"""

import functools
import math
import os

import cairocffi
import cffi
import numpy as np

# How FreeType fits outlines to the pixel grid. PIL draws as "full" does (same FreeType, same
# pixels for whole-pixel pens); "none" and "slight" give other pixels from the same outlines.
HINT_STYLES = {"none": cairocffi.HINT_STYLE_NONE, "slight": cairocffi.HINT_STYLE_SLIGHT,
               "full": cairocffi.HINT_STYLE_FULL}


@functools.lru_cache(maxsize=None)
def _freetype():
    # cairocffi wraps no FreeType faces; a fontconfig pattern that names the file gives one
    # without any family lookup, so no other installed font can stand in for a missing one.
    ffi = cffi.FFI()
    ffi.include(cairocffi.ffi)
    ffi.cdef("""typedef struct _FcPattern FcPattern; FcPattern *FcPatternCreate(void);
        int FcPatternAddString(FcPattern *p, const char *object, const unsigned char *s);
        int FcPatternAddInteger(FcPattern *p, const char *object, int i);
        void FcPatternDestroy(FcPattern *p);
        cairo_font_face_t *cairo_ft_font_face_create_for_pattern(FcPattern *pattern);""")
    return ffi.dlopen("libfontconfig.so.1"), ffi.dlopen("libcairo.so.2")


@functools.lru_cache(maxsize=None)
def load_font(path: str) -> cairocffi.FontFace:
    """A Cairo face of one font file, cached; FileNotFoundError now, not at the first draw."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no font file {path}")
    fontconfig, cairo = _freetype()
    pattern = fontconfig.FcPatternCreate()
    fontconfig.FcPatternAddString(pattern, b"file", os.fsencode(path))
    fontconfig.FcPatternAddInteger(pattern, b"index", 0)
    face = cairo.cairo_ft_font_face_create_for_pattern(pattern)  # it keeps its own reference
    fontconfig.FcPatternDestroy(pattern)
    return cairocffi.FontFace(face)


def set_font(context: cairocffi.Context, path: str, size: float, stretch: float = 1.0,
             hinting: str = "full", antialias: bool = True) -> None:
    """Draws with one font file at `size` pixels per em, its width times `stretch`, hinted as
    HINT_STYLES[hinting] says, with grey edges or (antialias off) black and white ones."""
    context.set_font_face(load_font(path))
    context.set_font_matrix(cairocffi.Matrix(xx=size * stretch, yy=size))
    options = cairocffi.FontOptions()
    options.set_hint_metrics(cairocffi.HINT_METRICS_OFF)  # advances then scale with the size
    options.set_hint_style(HINT_STYLES[hinting])
    options.set_antialias(cairocffi.ANTIALIAS_GRAY if antialias else cairocffi.ANTIALIAS_NONE)
    context.set_font_options(options)


def layout(context: cairocffi.Context, text: str, spacing: float):
    """Pen x of each character and the ink box (left, top, right, bottom) of the line."""
    pens, pen, box = [], 0.0, [math.inf, math.inf, -math.inf, -math.inf]
    for char in text:
        x_bearing, y_bearing, ink_width, ink_height, advance, _ = context.text_extents(char)
        pens.append(pen)
        box = [min(box[0], pen + x_bearing), min(box[1], y_bearing),
               max(box[2], pen + x_bearing + ink_width), max(box[3], y_bearing + ink_height)]
        pen += advance + spacing
    return pens, box


def gray(surface: cairocffi.ImageSurface) -> np.ndarray:
    """The uint8 [height, width] grey levels of an RGB24 surface drawn in greys."""
    pixels = np.ndarray((surface.get_height(), surface.get_stride() // 4, 4), np.uint8,
                        surface.get_data())
    return pixels[:, :surface.get_width(), 1].copy()  # R = G = B: any channel will do


def draw_text(text: str, font_path: str, size: float, height: int, width: int,
              origin: tuple[float, float], hinting: str = "full", antialias: bool = True
              ) -> np.ndarray:
    """Black text on white by Cairo alone: no spacing, transform, box or effect.

    Args:
      text, font_path, size: the characters, the font file and its pixels per em.
      height, width, origin: the image size and the first pen position (x, baseline y).
      hinting, antialias: as set_font takes them.
    Returns:
      uint8 [height, width].
    """
    surface = cairocffi.ImageSurface(cairocffi.FORMAT_RGB24, width, height)
    context = cairocffi.Context(surface)
    context.set_source_rgb(1, 1, 1)
    context.paint()
    context.set_source_rgb(0, 0, 0)
    set_font(context, font_path, size, hinting=hinting, antialias=antialias)
    for char, pen in zip(text, layout(context, text, 0.0)[0]):
        context.move_to(origin[0] + pen, origin[1])
        context.show_text(char)
    return gray(surface)
