"""pilstyle probe: 800 "plate" images of random 5-digit strings drawn by Pillow in faces that
/work/main/fonts/manifest.tsv does not name (list: /tmp/probes/pil_faces.txt, extracted from Debian 12
packages into /tmp/probes/fontroot with apt-get download + dpkg-deb -x, not installed system-wide).

Run with /tmp/probes/venv_cv/bin/python (Pillow 13). Writes /tmp/probes/pilstyle/NNNN_LABEL.png.
Per image (one random.Random seeded SEED + 1; faces in turn, index % len(faces)); drawn at 4x, then reduced:
  text      ink height of the 5 digits uniform 16-40 px; ink grey 0-70
  plate     light box, grey 190-250, padding around the ink 0.15-0.5 h (top/bottom) and 0.2-0.6 h (sides),
            dark border (grey 0-80) 1-3 px
  page      grey 90-170, 3-20 px above/below the plate, side margins so the page is >= 100 px wide
            (random extra up to 60 px, split at random)
  rotation  uniform -3..+3 degrees (bicubic, expand, corners filled with the page grey)
  JPEG      quality uniform 40-90, decoded again and saved as 8-bit grayscale PNG
  width     final image 100-260 px; a draw outside that is redrawn (new height/padding/etc.)
"""
import io
import os
import random

from PIL import Image, ImageDraw, ImageFont

SEED = 4004
OUT = "/tmp/probes/pilstyle"
COUNT = 800
SS = 4  # supersampling factor
ROOT = "/tmp/probes/fontroot/"
FACES = [line.split("\t")[0] for line in open("/tmp/probes/pil_faces.txt").read().splitlines()
         if line and not line.startswith("#")]


def text_ink(text, path, height):
    """L mask (255 = ink) of the text drawn at SS x scale, cropped to its ink box, ink height ~ height * SS."""
    size = 100
    for _ in range(3):
        font = ImageFont.truetype(path, size * SS)
        box = font.getbbox(text)
        size *= height / ((box[3] - box[1]) / SS)
    font = ImageFont.truetype(path, round(size * SS))
    box = font.getbbox(text)
    mask = Image.new("L", (box[2] - box[0] + 8 * SS, box[3] - box[1] + 8 * SS), 0)
    ImageDraw.Draw(mask).text((4 * SS - box[0], 4 * SS - box[1]), text, font=font, fill=255)
    return mask.crop(mask.getbbox())


labels_rng = random.Random(SEED)
labels = ["".join(labels_rng.choice("0123456789") for _ in range(5)) for _ in range(COUNT)]
rng = random.Random(SEED + 1)
os.makedirs(OUT, exist_ok=True)
rows = []
for index, text in enumerate(labels):
    face = FACES[index % len(FACES)]
    for attempt in range(50):
        h = rng.uniform(16, 40)
        mask = text_ink(text, ROOT + face, h)
        ink, plate_grey, border_grey = rng.uniform(0, 70), rng.uniform(190, 250), rng.uniform(0, 80)
        page_grey = rng.uniform(90, 170)
        pad_y, pad_x = rng.uniform(0.15, 0.5) * h, rng.uniform(0.2, 0.6) * h
        border = rng.randint(1, 3)
        tw, th = mask.width / SS, mask.height / SS
        plate_w, plate_h = tw + 2 * pad_x + 2 * border, th + 2 * pad_y + 2 * border
        top, bottom = rng.uniform(3, 20), rng.uniform(3, 20)
        sides = max(100 - plate_w, 6) + rng.uniform(0, 60)
        left = rng.uniform(3, sides - 3)
        right = sides - left
        page_w, page_h = round(plate_w + sides), round(plate_h + top + bottom)
        angle = rng.uniform(-3, 3)
        quality = rng.randint(40, 90)
        # draw at SS x
        page = Image.new("L", (page_w * SS, page_h * SS), round(page_grey))
        draw = ImageDraw.Draw(page)
        x0, y0 = round(left * SS), round(top * SS)
        x1, y1 = round((left + plate_w) * SS), round((top + plate_h) * SS)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=round(border_grey))
        b = border * SS
        draw.rectangle([x0 + b, y0 + b, x1 - 1 - b, y1 - 1 - b], fill=round(plate_grey))
        tx = round((x0 + x1) / 2 - mask.width / 2)
        ty = round((y0 + y1) / 2 - mask.height / 2)
        page.paste(Image.new("L", mask.size, round(ink)), (tx, ty), mask)
        page = page.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=round(page_grey))
        small = page.resize((round(page.width / SS), round(page.height / SS)), Image.LANCZOS)
        if 100 <= small.width <= 260:
            break
    else:
        raise RuntimeError(f"no draw fits 100-260 px for {index} {text} {face}")
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    final = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    final.save(os.path.join(OUT, f"{index:04d}_{text}.png"))
    rows.append(f"{index:04d}\t{text}\t{os.path.basename(face)}\t{h:.1f}\t{border}\t{angle:.2f}\t{quality}\t"
                f"{ink:.0f}\t{plate_grey:.0f}\t{border_grey:.0f}\t{page_grey:.0f}\t{final.width}x{final.height}\n")
with open("/tmp/probes/pilstyle.tsv", "w") as f:
    # index, label, face, ink height, border px, angle, jpeg quality, ink, plate, border, page greys, size
    f.writelines(rows)
print(COUNT, "images in", OUT, "from", len(FACES), "faces")
