"""Write the sharded splits in parallel worker processes, then the metadata.

Every plate is a pure function of (seed, split, index): its generator is seeded from
`SeedSequence(seed, spawn_key=(split, index))`, so the bytes do not depend on --shards,
--workers or the order in which workers finish.
"""

import concurrent.futures
import dataclasses
import glob
import multiprocessing
import os
import queue
import resource
import time
from typing import Callable, Sequence

import numpy as np

from plate_ocr.data import atlas as atlas_lib, augment_config, fonts, records, render

_PROGRESS_EVERY = 250
_PNG_STREAM = 100  # spawn key of write_png_plates, apart from every split's (its index in SPLITS)
# Plates rendered, then augmented, together: one call of the augmentation's graph for them all.
_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class PlateStyle:
    """What varies from plate to plate, and the fixed geometry."""

    alphabet: str = "0123456789"
    plate_length: int = 5  # the longest plate's characters
    font_size_min: int = 18
    font_size_max: int = 25
    spacing_min: int = 0
    spacing_max: int = 8
    spec: render.PlateSpec = render.PlateSpec()
    augment: augment_config.AugmentConfig = augment_config.AugmentConfig()
    # Augmented when written; make_records --augment_train adds "train".
    augmented_splits: tuple[str, ...] = ("test_aug", "val_aug")
    # Plates of several lengths (make_records --plate_lengths), the longest plate_length, in
    # the shares of records.length_shares; empty: plate_length alone.
    plate_lengths: tuple[int, ...] = ()

    def __post_init__(self):
        if self.plate_lengths and max(self.plate_lengths) != self.plate_length:
            raise ValueError(f"plate_length {self.plate_length} is not the longest of the "
                             f"plate lengths {self.plate_lengths}")

    @property
    def lengths(self) -> tuple[int, ...]:
        """The plates' lengths, shortest first."""
        return tuple(sorted(self.plate_lengths)) or (self.plate_length,)


def style_from_info(info: dict) -> PlateStyle:
    """The PlateStyle recorded in a dataset_info.json."""
    style = dict(info["plate_style"])
    style["spec"] = render.PlateSpec(**style["spec"])
    style["augment"] = augment_config.AugmentConfig(**style["augment"])
    style["augmented_splits"] = tuple(style["augmented_splits"])
    style["plate_lengths"] = tuple(style.get("plate_lengths", ()))
    return PlateStyle(**style)


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard for one worker: its labels and everything needed to render them."""

    output_dir: str
    split: str
    shard: int
    num_shards: int
    first_index: int  # index in the split of the shard's first plate
    labels: np.ndarray
    families: Sequence[Sequence[fonts.Face]]
    style: PlateStyle
    seed: int

    def run(self) -> dict:
        return write_shard(self)


@dataclasses.dataclass(frozen=True)
class AtlasTask:
    """The glyph atlas of the training faces (atlas.py), written by a worker like a shard."""

    output_dir: str
    families: Sequence[Sequence[fonts.Face]]
    style: PlateStyle
    labels: np.ndarray  # the training labels

    def run(self) -> dict:
        """Returns {"name", "num_examples" (0), "sha256", "bytes", "max_rss_mb"}."""
        written = atlas_lib.write_atlas(self.output_dir, self.families, self.style, self.labels)
        return dict(written, num_examples=0, max_rss_mb=_max_rss_mb())


def plate_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one plate."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(records.SPLITS.index(split), index)))


def make_plate(number: int, families: Sequence[Sequence[fonts.Face]], style: PlateStyle,
               rng: np.random.Generator, augmented: bool = False
               ) -> tuple[np.ndarray, list[int], str, fonts.Face, int, int]:
    """Renders one label: make_plates of one.

    Returns:
      (image, label digits, text, face, font size, spacing used).
    """
    return make_plates([number], families, style, [rng], augmented)[0]


def make_plates(numbers: Sequence[int], families: Sequence[Sequence[fonts.Face]],
                style: PlateStyle, rngs: Sequence[np.random.Generator], augmented: bool = False
                ) -> list[tuple[np.ndarray, list[int], str, fonts.Face, int, int]]:
    """Renders labels, each from its own generator: a family, then a face, size and spacing
    drawn from it; then, for an augmented split, the style's augmentation of them all at once.

    Returns:
      per label: (image, label digits, text, face, font size, spacing used).
    """
    images, details = [], []
    for number, rng in zip(numbers, rngs):
        family = families[int(rng.integers(len(families)))]
        face = family[int(rng.integers(len(family)))]
        size = int(rng.integers(style.font_size_min, style.font_size_max + 1))
        spacing = int(rng.integers(style.spacing_min, style.spacing_max + 1))
        digits = records.label_digits(number, style.alphabet, style.lengths)
        text = "".join(style.alphabet[d] for d in digits)
        glyphs = render.load_glyphs(face.path, size, style.alphabet)
        image, spacing = render.render_plate([glyphs[c] for c in text], spacing, style.spec,
                                             rng)
        images.append(image)
        details.append((digits, text, face, size, spacing))
    if augmented:
        # TensorFlow only in the processes that augment: clean shards start in a blink.
        from plate_ocr.data import augment
        inks = 255 - np.stack(images)
        keys = np.stack([rng.integers(2 ** 62, size=2) for rng in rngs])
        ways = np.array(style.augment.turn_ways(style.alphabet))[np.array(
            [records.padded_label(digits, style.plate_length) for digits, *_ in details])]
        images = augment.augment_plates(inks, style.augment, keys, style.spec.margin, ways)
    return [(image, *detail) for image, detail in zip(images, details)]


def write_png_plates(output_dir: str, numbers: Sequence[int], families: Sequence[Sequence[fonts.Face]],
                     style: PlateStyle, seed: int) -> list[str]:
    """Writes one PNG per label, named by its text (e.g. 37463.png), like a folder of photos.

    The plates use their own random stream: their labels may be test labels, their pixels are
    not copies of the test records.
    """
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for index, number in enumerate(numbers):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PNG_STREAM, index)))
        image, _, text, _, _, _ = make_plate(number, families, style, rng)
        paths.append(os.path.join(output_dir, f"{text}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _report(count: int) -> None:
    if _progress_queue is not None and count:
        _progress_queue.put(count)


def write_shard(task: ShardTask) -> dict:
    """Renders and writes one shard under a temporary name, renamed once complete.

    Returns:
      {"name", "num_examples", "sha256", "max_rss_mb"} of the shard.
    """
    name = records.shard_name(task.split, task.shard, task.num_shards)
    augmented = task.split in task.style.augmented_splits

    def examples():
        unreported = 0
        for start in range(0, len(task.labels), _CHUNK):
            numbers = task.labels[start:start + _CHUNK]
            rngs = [plate_rng(task.seed, task.split, task.first_index + start + offset)
                    for offset in range(len(numbers))]
            for image, digits, text, face, size, spacing in make_plates(
                    numbers, task.families, task.style, rngs, augmented):
                yield records.encode_example(image, digits, text, face.name, size, spacing)
                unreported += 1
                if unreported == _PROGRESS_EVERY:
                    _report(unreported)
                    unreported = 0
        _report(unreported)
    sha256 = records.write_shard_file(task.output_dir, name, examples())
    return {"name": name, "num_examples": len(task.labels), "sha256": sha256,
            "max_rss_mb": _max_rss_mb()}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_tasks(output_dir: str, labels: dict[str, np.ndarray], shards: dict[str, int],
                faces: dict[str, Sequence[fonts.Face]], style: PlateStyle,
                seed: int) -> list[ShardTask | AtlasTask]:
    """Cuts every split into contiguous shards, largest first so workers finish together; the
    glyph atlas first of all (it takes as long as a large shard).

    `faces` has the "train" faces (train, val and test plates) and the "heldout" ones.
    """
    tasks = []
    for split, split_labels in labels.items():
        if len(split_labels) == 0:
            continue
        num_shards = min(shards[split], len(split_labels))
        bounds = records.shard_bounds(len(split_labels), num_shards)
        families = fonts.group_by_family(faces["heldout" if split == "heldout" else "train"])
        tasks += [ShardTask(output_dir, split, shard, num_shards, bounds[shard],
                            split_labels[bounds[shard]:bounds[shard + 1]], families, style, seed)
                  for shard in range(num_shards)]
    tasks = sorted(tasks, key=lambda task: -len(task.labels))
    atlas = AtlasTask(output_dir, fonts.group_by_family(faces["train"]), style, labels["train"])
    return [atlas] + tasks


def check_fit(faces: Sequence[fonts.Face], style: PlateStyle) -> None:
    """Checks that every face fits the plate at the largest size with the widest glyphs.

    Raises:
      ValueError: naming the first face that cannot fit.
    """
    available = style.spec.width - 2 * style.spec.margin
    for face in faces:
        glyphs = render.load_glyphs(face.path, style.font_size_max, style.alphabet)
        widest = max(glyphs.values(), key=lambda g: g.advance + g.ink.shape[1])
        height = (max(g.top + g.ink.shape[0] for g in glyphs.values())
                  - min(g.top for g in glyphs.values()))
        if height > style.spec.height - 2 * style.spec.margin:
            raise ValueError(f"glyphs of {face.name} at size {style.font_size_max} are "
                             f"{height} pixels tall, more than the plate allows")
        try:
            fitted = render.fit_spacing([widest] * style.plate_length, style.spacing_min,
                                        available)
        except ValueError:
            fitted = None
        if fitted is None or fitted < style.spacing_min:
            raise ValueError(f"{style.plate_length} glyphs of {face.name} at size "
                             f"{style.font_size_max} do not fit {available} pixels with "
                             f"--spacing_min {style.spacing_min}: lower --font_size_max")


def existing_output(output_dir: str) -> list[str]:
    """Files of an earlier dataset in output_dir (shards, atlas and metadata)."""
    return sorted(glob.glob(os.path.join(output_dir, "plates-*.tfrecord-*"))
                  + glob.glob(os.path.join(output_dir, atlas_lib.ATLAS_NAME))
                  + glob.glob(os.path.join(output_dir, records.INFO_NAME)))


def clear_output(output_dir: str) -> None:
    """Removes an earlier dataset, metadata first, and temporaries of killed runs."""
    info = os.path.join(output_dir, records.INFO_NAME)
    if os.path.exists(info):
        os.remove(info)
    for path in existing_output(output_dir) + glob.glob(os.path.join(output_dir,
                                                                      records.TEMPORARY_GLOB)):
        os.remove(path)


def run_tasks(tasks: Sequence[ShardTask | AtlasTask], workers: int,
              on_progress: Callable[[int], None]) -> list[dict]:
    """Writes the shards and the atlas with `workers` spawned processes (0: in this process)."""
    if workers == 0:
        results = []
        for task in tasks:
            results.append(task.run())
            on_progress(results[-1]["num_examples"])
        return results
    # spawn, not fork: a forked copy of a process that has TensorFlow loaded can deadlock.
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(progress_queue,)) as pool:
        futures = [pool.submit(task.run) for task in tasks]
        try:
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.1)
                for future in done:
                    future.result()  # raise a worker's error now
                while True:
                    try:
                        on_progress(progress_queue.get_nowait())
                    except queue.Empty:
                        break
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [future.result() for future in futures]


def write_dataset(output_dir: str, labels: dict[str, np.ndarray], shards: dict[str, int],
                  faces: dict[str, Sequence[fonts.Face]], style: PlateStyle, seed: int,
                  workers: int, on_progress: Callable[[int], None] = lambda n: None,
                  extra_info: dict | None = None) -> dict:
    """Writes every split's shards, then dataset_info.json (last, so it marks completion).

    Returns:
      the metadata written.
    """
    os.makedirs(output_dir, exist_ok=True)
    clear_output(output_dir)
    started = time.perf_counter()
    tasks = shard_tasks(output_dir, labels, shards, faces, style, seed)
    try:
        results = {r["name"]: r for r in run_tasks(tasks, workers, on_progress)}
    except BaseException:
        # A failed run (disk full, a worker's error, Ctrl-C) leaves nothing behind: whole shards
        # without metadata are not a dataset, and removing them frees the space.
        clear_output(output_dir)
        raise
    splits = {}
    for split in records.SPLITS:
        split_tasks = sorted((t for t in tasks if isinstance(t, ShardTask) and t.split == split),
                             key=lambda t: t.shard)
        shard_info = [{key: results[records.shard_name(split, t.shard, t.num_shards)][key]
                       for key in ("name", "num_examples", "sha256")} for t in split_tasks]
        splits[split] = {"num_examples": int(len(labels[split])), "shards": shard_info,
                         "fonts": "heldout" if split == "heldout" else "train",
                         "augmented": split in style.augmented_splits}
    info = {
        "image_height": style.spec.height, "image_width": style.spec.width,
        "alphabet": style.alphabet, "plate_length": style.plate_length, "seed": seed,
        **({"plate_lengths": list(style.lengths)} if len(style.lengths) > 1 else {}),
        "splits": splits,
        "fonts": {split: [{"name": f.name, "family": f.family, "file": os.path.basename(f.path)}
                          for f in split_faces] for split, split_faces in
                  (("train", faces["train"]), ("heldout", faces["heldout"]))},
        "plate_style": dataclasses.asdict(style),
        "glyph_atlas": {key: results[atlas_lib.ATLAS_NAME][key] for key in ("name", "sha256")},
        "write_seconds": round(time.perf_counter() - started, 2),
        "max_worker_rss_mb": round(max(r["max_rss_mb"] for r in results.values()), 1),
        **(extra_info or {}),
    }
    records.write_info(output_dir, info)
    return info
