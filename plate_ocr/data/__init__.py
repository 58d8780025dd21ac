"""Making and storing plates. In: the font manifest's faces, a plate style (alphabet, length, image
size, augmentation) and a user's labelled images. Out: sharded TFRecords with dataset_info.json
and the glyph atlas beside them, which training/ and serving/ read, and image files fitted to the
model's input (predict.py). Imports no other part of plate_ocr."""
