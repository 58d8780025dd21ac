"""Splits that other software draws, added to a finished dataset: foreign (Cairo), captcha.

writer.write_dataset renders the splits of records.SPLITS with PIL in worker processes; these
come after it, in this process, from a drawing function, and are listed in dataset_info.json
only once their shards are whole. Each plate is the drawing function's pure function of (seed,
index), so the shards do not depend on how the split is cut into shards or chunks.
"""

import os
import time
from typing import Callable, Sequence

import numpy as np

from plate_ocr.data import records, writer

PROGRESS_EVERY = 250  # plates drawn per call of the drawing function, and per progress report
# draw(numbers, first_index) -> (uint8 [N, height, width], per plate (text, font name, font size
# and letter spacing in plate pixels)); first_index is the split index of numbers[0].
Draw = Callable[[Sequence[int], int], tuple[np.ndarray, list[tuple[str, str, int, int]]]]


def _write_shard(records_dir: str, name: str, numbers: Sequence[int], first_index: int,
                 alphabet: str, draw: Draw, on_progress: Callable[[int], None]) -> str:
    """Draws and writes one shard under a temporary name, renamed once whole; its sha256."""
    def examples():
        for start in range(0, len(numbers), PROGRESS_EVERY):
            chunk = numbers[start:start + PROGRESS_EVERY]
            images, details = draw(chunk, first_index + start)
            for image, (text, font, size, spacing) in zip(images, details):
                yield records.encode_example(image, [alphabet.index(c) for c in text], text,
                                             font, size, spacing)
            on_progress(len(chunk))
    return records.write_shard_file(records_dir, name, examples())


def add_split(records_dir: str, info: dict, split: str, numbers: Sequence[int], draw: Draw,
              num_shards: int, fonts: list[dict], renderer: str, labels_from: str,
              on_progress: Callable[[int], None] = lambda n: None) -> dict:
    """Writes a drawn split into a finished dataset and lists it in its dataset_info.json.

    Args:
      records_dir, info: the dataset and its metadata, just written.
      split, numbers, draw: the split's name, its plates' labels (1 or more) and what draws them.
      num_shards: shards of the split (at most one per plate).
      fonts, renderer, labels_from: what the metadata says of it: the faces drawn
        ({"name", "family", "file"} each), the program and version, the split whose labels
        it reads.
      on_progress: called with each number of plates written.
    Returns:
      the metadata written, with the split, its faces and `<split>_write_seconds`.
    """
    started = time.perf_counter()
    # Gone until the split is whole: a run killed meanwhile leaves no complete-looking dataset.
    os.remove(os.path.join(records_dir, records.INFO_NAME))
    num_shards = min(num_shards, len(numbers))
    bounds = records.shard_bounds(len(numbers), num_shards)
    shards = []
    try:
        for shard in range(num_shards):
            first, stop = bounds[shard], bounds[shard + 1]
            name = records.shard_name(split, shard, num_shards)
            shards.append({"name": name, "num_examples": stop - first, "sha256": _write_shard(
                records_dir, name, numbers[first:stop], first, info["alphabet"], draw,
                on_progress)})
    except BaseException:  # as the writer does: no dataset left, the space of a full disk freed
        writer.clear_output(records_dir)
        raise
    entry = {"num_examples": len(numbers), "shards": shards, "fonts": split, "augmented": False,
             "labels_from": labels_from, "renderer": renderer}
    info = dict(info, **{f"{split}_write_seconds": round(time.perf_counter() - started, 2)})
    info["splits"] = dict(info["splits"], **{split: entry})
    info["fonts"] = dict(info["fonts"], **{split: fonts})
    records.write_info(records_dir, info)
    return info
