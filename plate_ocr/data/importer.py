"""A user's own labelled plate images as records: the schema, shards and metadata of ours.

The images come from a folder (each label the last run of the alphabet's characters in its
file's name, as bin/predict --labels_from_filenames reads it) or from a list: CSV rows
`path,label[,split]` (fast-plate-ocr's form) or TSV rows `path<TAB>label` (PaddleOCR's), the
paths relative to the list's folder. Each image is fitted to the model's input as bin/predict
fits it (predict.load_image). Every row that cannot be imported is one Problem, reported and
counted, never dropped silently. The splits: a list's split column where it has one, else
train/val/test drawn by label, so that no label is in two splits.
"""

import csv
import dataclasses
import hashlib
import os
import time
from typing import Callable, Sequence

import numpy as np

from plate_ocr.data import predict, records

SPLITS = ("train", "val", "test")
LIST_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
REPORT_NAME = "import_report.tsv"  # beside the records: one line per row not imported


@dataclasses.dataclass(frozen=True)
class Row:
    """One labelled image: where it came from (for the report), its file, label and split
    (None: drawn by label)."""

    source: str
    path: str
    label: str
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
    """A row that is not imported: where, and why, in a few words."""

    source: str
    reason: str

    def line(self) -> str:
        return f"{self.source}\t{self.reason}"


def read_rows(source: str, alphabet: str) -> tuple[list[Row], list[Problem]]:
    """The rows of a folder of images or of a CSV / TSV list.

    Raises:
      ValueError: the source is neither a folder nor a readable list (one line).
    """
    if os.path.isdir(source):
        rows, problems = [], []
        for path in predict.list_images([source]):
            label = predict.label_from_filename(path, alphabet)
            if label is None:
                problems.append(Problem(path, f"no run of {alphabet!r} characters in its name"))
            else:
                rows.append(Row(path, path, label))
        return rows, problems
    delimiter = LIST_DELIMITERS.get(os.path.splitext(source)[1].lower())
    if delimiter is None:
        raise ValueError(f"{source} is neither a folder of images nor a list (.csv: path,label"
                         "[,split]; .tsv or .txt: path<TAB>label[<TAB>split])")
    try:
        with open(source, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not a readable list ({error.__class__.__name__})") from None
    folder = os.path.dirname(os.path.abspath(source))
    rows, problems = [], []
    for number, fields in enumerate(lines, 1):
        where = f"{source}:{number}"
        fields = [field.strip() for field in fields]
        if not any(fields):
            continue  # a blank line
        if number == 1 and len(fields) >= 2 and fields[1].lower() == "label":
            continue  # a header
        if len(fields) not in (2, 3) or not fields[0]:
            problems.append(Problem(where, "expected path, label and an optional split"))
            continue
        split = fields[2].lower() if len(fields) == 3 and fields[2] else None
        if split is not None and split not in SPLITS:
            problems.append(Problem(where, f"split {fields[2]!r} is none of {', '.join(SPLITS)}"))
            continue
        rows.append(Row(where, os.path.join(folder, fields[0]), fields[1], split))
    return rows, problems


def check_labels(rows: Sequence[Row], alphabet: str,
                 lengths: Sequence[int]) -> tuple[list[Row], list[Problem]]:
    """The rows whose label has as many characters of the alphabet as one of `lengths`."""
    good, problems = [], []
    allowed = " or ".join(str(length) for length in sorted(set(lengths)))
    for row in rows:
        outside = sorted(set(row.label) - set(alphabet))
        if outside:
            problems.append(Problem(row.source, f"label {row.label!r} has characters outside "
                                                f"the alphabet: {''.join(outside)!r}"))
        elif len(row.label) not in lengths:
            problems.append(Problem(row.source, f"label {row.label!r} has {len(row.label)} "
                                                f"characters, the plates {allowed}"))
        else:
            good.append(row)
    return good, problems


def assign_splits(rows: Sequence[Row], val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[list[Row], list[Problem]]:
    """Every row with a split; all rows of a label in one.

    A label's split is the first one a row gives it; rows that give it another are problems.
    The labels no row places are shuffled (by the seed) and cut into test, val and train by
    the fractions.
    """
    placed: dict[str, str] = {}
    problems = []
    for row in rows:
        if row.split is not None:
            first = placed.setdefault(row.label, row.split)
            if first != row.split:
                problems.append(Problem(row.source, f"label {row.label!r} is in {first} "
                                                    f"already, not {row.split}"))
    free = sorted({row.label for row in rows} - set(placed))
    order = np.random.default_rng(seed).permutation(len(free))
    test = round(test_fraction * len(free))
    val = round(val_fraction * len(free))
    for rank, index in enumerate(order):
        placed[free[index]] = "test" if rank < test else "val" if rank < test + val else "train"
    rejected = {problem.source for problem in problems}
    return ([dataclasses.replace(row, split=placed[row.label]) for row in rows
             if row.source not in rejected], problems)


def load_images(rows: Sequence[Row], height: int, width: int,
                on_row: Callable[[], None] = lambda: None
                ) -> tuple[list[tuple[Row, np.ndarray]], list[Problem]]:
    """Each row's image fitted to height x width; unreadable, missing and repeated files
    (the same bytes as an earlier row's) are problems."""
    loaded, problems, seen = [], [], {}

    def load(row: Row) -> np.ndarray | str:
        """The fitted image, or why not."""
        try:
            with open(row.path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return f"{row.path}: no such file"
        if digest in seen:
            return f"the same image as {seen[digest]}"
        try:
            image = predict.load_image(row.path, height, width)
        except ValueError as error:
            return str(error)
        seen[digest] = row.source
        return image

    for row in rows:
        image = load(row)
        if isinstance(image, str):
            problems.append(Problem(row.source, image))
        else:
            loaded.append((row, image))
        on_row()
    return loaded, problems


def write_records(output_dir: str, loaded: Sequence[tuple[Row, np.ndarray]], alphabet: str,
                  lengths: Sequence[int], shards: int, source: str, problems: Sequence[Problem],
                  seed: int) -> dict:
    """Writes the splits' shards (each renamed once whole), the report and dataset_info.json
    (last: a dataset without it is unfinished). Returns the metadata.

    Plates of several `lengths`: each label ended with records.PAD to the longest, which is
    the metadata's plate_length; its plate_lengths lists them all.
    """
    started = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    height, width = loaded[0][1].shape
    plate_length = max(lengths)
    info = {"alphabet": alphabet, "plate_length": plate_length, "image_height": height,
            "image_width": width, "seed": seed, "fonts": {},
            "source": {"input": os.path.abspath(source), "rows_imported": len(loaded),
                       "rows_not_imported": len(problems), "report": REPORT_NAME},
            "splits": {}}
    if len(set(lengths)) > 1:
        info["plate_lengths"] = sorted(set(lengths))
    for split in SPLITS:
        plates = [(row, image) for row, image in loaded if row.split == split]
        if not plates:
            continue
        count = min(shards, len(plates))
        bounds = records.shard_bounds(len(plates), count)
        entries = []
        for shard in range(count):
            name = records.shard_name(split, shard, count)
            sha256 = records.write_shard_file(output_dir, name, (
                records.encode_example(image, records.padded_label(
                    [alphabet.index(c) for c in row.label], plate_length), row.label, "", 0, 0)
                for row, image in plates[bounds[shard]:bounds[shard + 1]]))
            entries.append({"name": name, "num_examples": bounds[shard + 1] - bounds[shard],
                            "sha256": sha256})
        info["splits"][split] = {"num_examples": len(plates), "shards": entries,
                                 "fonts": "imported", "augmented": False}
    with records.whole_file(output_dir, REPORT_NAME) as f:
        f.write("".join(problem.line() + "\n" for problem in problems).encode())
    info["write_seconds"] = round(time.perf_counter() - started, 2)
    records.write_info(output_dir, info)
    return info
