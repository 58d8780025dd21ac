"""hershey probe: 800 images of random 5-digit strings drawn by OpenCV's cv2.putText (Hershey vector fonts).

Run with /tmp/probes/venv_cv/bin/python (opencv-python-headless 4.14: OpenCV 5 draws putText with TrueType faces, not Hershey). Writes /tmp/probes/hershey/NNNN_LABEL.png.
Per image (all draws from one numpy Generator seeded SEED):
  font        the 8 Hershey ids in turn (100 images each); FONT_ITALIC or'ed in with p=0.3
  height      ink height of the digits, uniform 20-60 px (scale solved from a trial render)
  thickness   uniform 1-4, capped at max(1, height // 10) so small text doesn't fill in
  line type   LINE_AA (p=0.75) or LINE_8
  margins     each side uniform 4-20 px around the ink box
  ink/page    dark ink 0-90 (p=0.6) or grey ink 90-130; page light 200-255 (p=0.6) or grey 150-200;
              redrawn until page - ink >= 80
  blur        half of the images: Gaussian, sigma uniform 0.5-1.2
  noise       Gaussian, sigma uniform 1-5 grey levels; 8-bit grayscale PNG
"""
import os
import random

import cv2
import numpy as np

SEED = 2002
OUT = "/tmp/probes/hershey"
COUNT = 800
FONTS = [("SIMPLEX", cv2.FONT_HERSHEY_SIMPLEX), ("PLAIN", cv2.FONT_HERSHEY_PLAIN),
         ("DUPLEX", cv2.FONT_HERSHEY_DUPLEX), ("COMPLEX", cv2.FONT_HERSHEY_COMPLEX),
         ("TRIPLEX", cv2.FONT_HERSHEY_TRIPLEX), ("COMPLEX_SMALL", cv2.FONT_HERSHEY_COMPLEX_SMALL),
         ("SCRIPT_SIMPLEX", cv2.FONT_HERSHEY_SCRIPT_SIMPLEX), ("SCRIPT_COMPLEX", cv2.FONT_HERSHEY_SCRIPT_COMPLEX)]


def ink_mask(text, font, scale, thickness, line):
    """float mask in [0, 1] of the text, cropped to its ink box."""
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad = 10 + 2 * thickness
    canvas = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (pad, pad + h), font, scale, 255, thickness, line)
    ys, xs = np.nonzero(canvas)
    assert ys.min() > 0 and xs.min() > 0 and ys.max() < canvas.shape[0] - 1 and xs.max() < canvas.shape[1] - 1
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255


labels_rng = random.Random(SEED)
labels = ["".join(labels_rng.choice("0123456789") for _ in range(5)) for _ in range(COUNT)]
rng = np.random.default_rng(SEED)
os.makedirs(OUT, exist_ok=True)
rows = []
for index, text in enumerate(labels):
    name, font = FONTS[index * len(FONTS) // COUNT]
    italic = rng.random() < 0.3
    if italic:
        font |= cv2.FONT_ITALIC
    target = rng.uniform(20, 60)
    thickness = min(int(rng.integers(1, 5)), max(1, int(target) // 10))
    line = cv2.LINE_AA if rng.random() < 0.75 else cv2.LINE_8
    scale = 1.0
    for _ in range(3):  # solve the scale for the wanted ink height
        scale *= target / ink_mask(text, font, scale, thickness, line).shape[0]
    mask = ink_mask(text, font, scale, thickness, line)
    top, bottom, left, right = (int(m) for m in rng.integers(4, 21, size=4))
    alpha = np.zeros((mask.shape[0] + top + bottom, mask.shape[1] + left + right), np.float32)
    alpha[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
    while True:
        ink = rng.uniform(0, 90) if rng.random() < 0.6 else rng.uniform(90, 130)
        page = rng.uniform(200, 255) if rng.random() < 0.6 else rng.uniform(150, 200)
        if page - ink >= 80:
            break
    image = page * (1 - alpha) + ink * alpha
    sigma = rng.uniform(0.5, 1.2) if index % 2 else 0.0
    if sigma:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = rng.uniform(1, 5)
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).round().astype(np.uint8)
    path = os.path.join(OUT, f"{index:04d}_{text}.png")
    cv2.imwrite(path, image)
    rows.append(f"{index:04d}\t{text}\t{name}{'|ITALIC' if italic else ''}\t{mask.shape[0]}\t{thickness}\t"
                f"{'AA' if line == cv2.LINE_AA else '8'}\t{ink:.0f}\t{page:.0f}\t{sigma:.2f}\t{noise:.1f}\t"
                f"{image.shape[1]}x{image.shape[0]}\n")
with open("/tmp/probes/hershey.tsv", "w") as f:  # index, label, font, ink height, thickness, line, ink, page, blur, noise, size
    f.writelines(rows)
print(COUNT, "images in", OUT)
