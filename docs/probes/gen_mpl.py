"""mpl probe: 800 images of random 5-digit strings drawn by matplotlib (Agg) with fig.text.

Run with /tmp/probes/venv_cv/bin/python (matplotlib 3.11). Writes /tmp/probes/mpl/NNNN_LABEL.png.
Canvas: figure 2.4 x 0.9 in at dpi 100 = 240 x 90 px, white; text black, fontsize uniform 18-34 pt;
position uniform over the spots where the text's rendered extent keeps >= 4 px from every edge.
Faces, 200 images each (in turn by blocks of 200):
  DejaVu Sans   fontfamily="DejaVu Sans"
  DejaVu Serif  fontfamily="DejaVu Serif"
  STIX          fontfamily="STIXGeneral"
  CM            mathtext "$\\mathrm{LABEL}$" with rcParams["mathtext.fontset"] = "cm" (cmr10)
Saved as RGBA by savefig, then converted to 8-bit grayscale ("L") PNG with Pillow.
"""
import io
import os
import random

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

SEED = 3003
OUT = "/tmp/probes/mpl"
COUNT = 800
W, H, DPI, MARGIN = 240, 90, 100, 4
FACES = ["DejaVu Sans", "DejaVu Serif", "STIX", "CM"]

plt.rcParams["mathtext.fontset"] = "cm"
labels_rng = random.Random(SEED)
labels = ["".join(labels_rng.choice("0123456789") for _ in range(5)) for _ in range(COUNT)]
rng = random.Random(SEED + 1)
os.makedirs(OUT, exist_ok=True)
fig = plt.figure(figsize=(W / DPI, H / DPI), dpi=DPI, facecolor="white")
renderer = fig.canvas.get_renderer()
rows = []
for index, text in enumerate(labels):
    face = FACES[index * len(FACES) // COUNT]
    size = rng.uniform(18, 34)
    if face == "CM":
        artist = fig.text(0, 0, rf"$\mathrm{{{text}}}$", fontsize=size, color="black")
    else:
        artist = fig.text(0, 0, text, fontsize=size, color="black",
                          fontfamily="STIXGeneral" if face == "STIX" else face)
    box = artist.get_window_extent(renderer)  # pixels, origin bottom-left, text anchored at (0, 0)
    x_lo, x_hi = MARGIN - box.x0, W - MARGIN - box.x1
    y_lo, y_hi = MARGIN - box.y0, H - MARGIN - box.y1
    assert x_lo <= x_hi and y_lo <= y_hi, (index, text, face, size, box)
    x, y = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    artist.set_position((x / W, y / H))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    artist.remove()
    image = Image.open(buffer).convert("L")
    assert image.size == (W, H), image.size
    image.save(os.path.join(OUT, f"{index:04d}_{text}.png"))
    rows.append(f"{index:04d}\t{text}\t{face}\t{size:.1f}\t{x:.0f}\t{y:.0f}\n")
with open("/tmp/probes/mpl.tsv", "w") as f:  # index, label, face, fontsize pt, x px, y px (baseline-left anchor)
    f.writelines(rows)
print(COUNT, "images in", OUT)
