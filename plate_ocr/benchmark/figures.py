"""Speed and memory of each pipeline stage on this machine: one function per stage, one table.

This file holds the figures and their targets, the table, the measuring helpers and the records
stage; input_stages.py and model_stages.py hold the TensorFlow stages.

A stage function takes plain arguments and returns {figure: value}, each the median over
repeats after a warm-up; FIGURES says how each figure prints and the target it is held to.
Stages that need TensorFlow import it inside their function: the records stage and its workers
never load it. Each TensorFlow measurement runs alone in a fresh process (run_measured), so its
peak RSS is its own and not the high-water mark of everything measured before it.
"""

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import time
from typing import Sequence

import numpy as np

from plate_ocr.data import fonts, records, render, writer

# make_records' default flags: the dataset that the "under 20 s" target is about.
DEFAULT_DATASET = {"train": 60000, "val": 5000, "test": 10000, "heldout": 2000, "test_aug": 2000,
                   "val_aug": 2000}
DEFAULT_SHARDS = {"train": 16, "val": 2, "test": 2, "heldout": 2, "test_aug": 2, "val_aug": 2}
MIN_FONT_FAMILIES = 22
STAGES = ("records", "pipeline", "train", "inference", "time_to_accuracy")
BATCH = 256  # the input pipeline's and batched inference's batch


@dataclasses.dataclass(frozen=True)
class Figure:
    """How one figure prints, and its target (None: reported, not judged)."""

    label: str
    unit: str
    target: float | None = None
    at_least: bool = True  # False: the target is a ceiling


FIGURES = {
    "records": {
        "glyph_warmup_s": Figure("glyph cache warm-up per worker, all train faces x sizes", "s"),
        "plates_per_s_1_worker": Figure("steady state, 1 worker", "plates/s", 3000),
        "plates_per_s_2_workers": Figure("steady state, 2 workers together", "plates/s"),
        "plates_per_s_per_worker_2_workers": Figure("steady state, 2 workers, per worker",
                                                    "plates/s", 3000),
        "speedup_2_workers": Figure("2 workers / 1 worker", "x", 1.8),
        "augmented_plates_per_s_1_worker": Figure("steady state, 1 worker, augmented plates "
                                                  "(--augment_train)", "plates/s"),
        # The wide augmentation (TF ops, ~1 ms a plate) costs more than the clean rendering;
        # the clean plates' own rate keeps its target.
        "augmented_slowdown_1_worker": Figure("1 worker: clean plates/s / augmented plates/s",
                                              "x"),
        "busy_loop_speedup_2_processes": Figure("this machine: a busy loop, 2 processes / 1",
                                                "x"),
        "peak_rss_mb_short_run": Figure("peak RSS of a worker after the short run", "MB"),
        "peak_rss_mb_long_run": Figure("peak RSS of that worker after the long run too", "MB"),
        "peak_rss_mb_2_workers": Figure("peak RSS per worker, 2 workers", "MB"),
        "dataset_plates": Figure("make_records: plates in the dataset", "plates"),
        "dataset_s": Figure("make_records: fonts, labels, 2 workers, metadata", "s", 20, False),
        "dataset_plates_per_s": Figure("make_records: throughput", "plates/s"),
        "dataset_peak_rss_mb_per_worker": Figure("make_records: peak RSS per worker", "MB"),
    },
    "pipeline": {
        "tfrecord_examples_per_s": Figure("TFRecords: shuffle, batch, parse, decode_raw, /255",
                                          "examples/s", 50000),
        "png_examples_per_s": Figure("PNG folder: list_files, read_file + decode_png, batch, "
                                     "/255", "examples/s"),
        "tfrecord_over_png": Figure("TFRecords / PNG folder", "x", 5),
        "service_1_worker_examples_per_s": Figure("TFRecords through a tf.data service, 1 local "
                                                  "worker process", "examples/s"),
        "service_2_workers_examples_per_s": Figure("TFRecords through a tf.data service, 2 "
                                                   "local worker processes", "examples/s"),
        "tfrecord_over_service_1_worker": Figure("in process / through the service, 1 worker",
                                                 "x"),
        "render_examples_per_s": Figure("rendered from the glyph atlas (--source=render): "
                                        "draw, compose, shuffle, batch, /255", "examples/s"),
        "render_service_1_worker_examples_per_s": Figure("rendered by a tf.data service, 1 "
                                                         "local worker process", "examples/s"),
        "render_service_2_workers_examples_per_s": Figure("rendered by a tf.data service, 2 "
                                                          "local worker processes",
                                                          "examples/s"),
        "render_augmented_examples_per_s": Figure("rendered and augmented by TF ops "
                                                  "(--render_augment)", "examples/s"),
        "render_over_service_1_worker": Figure("rendered: in process / through the service, "
                                               "1 worker", "x"),
        "tfrecord_peak_rss_mb": Figure("peak RSS of the TFRecord pipeline's process", "MB"),
        "png_peak_rss_mb": Figure("peak RSS of the PNG pipeline's process", "MB"),
    },
    # One group of rows per config: the stage prints as "train <config name>".
    "train": {
        "batch_size": Figure("batch (the config's)", "examples"),
        "parameters": Figure("model parameters", "weights"),
        "custom_examples_per_s": Figure("custom loop: Trainer.train_loop (+ greedy decode, "
                                        "metrics), OneDevice", "examples/s"),
        "fit_examples_per_s": Figure("model.fit: keras.losses.CTC, same model, Adam, batch, "
                                     "data", "examples/s"),
        "custom_over_fit": Figure("custom loop / model.fit", "x", 1.0),
        "pipeline_over_custom": Figure("input pipeline (TFRecords) / custom loop", "x", 10),
        "custom_peak_rss_mb": Figure("peak RSS of the custom loop's process", "MB"),
        "fit_peak_rss_mb": Figure("peak RSS of model.fit's process", "MB"),
    },
    "inference": {
        # Issue 24's goals: a camera's plates one by one, or a queue of them batched.
        "batch_plates_per_s": Figure("batch 256 (uint8 in, reading out), all cores",
                                     "plates/s", 5000),
        "single_p50_ms": Figure("1 plate per call, 1 thread: median latency", "ms", 0.5, False),
        "single_p99_ms": Figure("1 plate per call, 1 thread: 99th percentile", "ms"),
        "single_p50_ms_2_threads": Figure("1 plate per call, 2 threads: median latency", "ms"),
        "single_p99_ms_2_threads": Figure("1 plate per call, 2 threads: 99th percentile", "ms"),
        "val_plate_accuracy": Figure("val plate accuracy of the batches' plates", ""),
        # Where the records have a foreign split: as many of its plates as the batches'.
        "foreign_plate_accuracy": Figure("foreign plate accuracy (another renderer)", ""),
        "size_mb": Figure("model file size", "MB"),
        "peak_rss_mb": Figure("peak RSS of the batched inference process", "MB"),
    },
    # What a user could run instead of training anything: model_stages.tesseract_stage.
    "tesseract": {
        "plates_per_s": Figure("one process over a list of PNGs, 1 thread", "plates/s"),
        "ms_per_plate": Figure("its time per plate", "ms"),
        "val_plate_accuracy": Figure("val plate accuracy", ""),
    },
    "time_to_accuracy": {
        "parameters": Figure("model parameters", "weights"),
        "examples_per_s": Figure("training examples/s (all epochs, first included)",
                                 "examples/s"),
        "minutes_to_99": Figure("training minutes to 99% plate accuracy of the validated "
                                "split (val_aug)", "min"),
        "minutes_to_99.5": Figure("training minutes to 99.5% of the validated split", "min"),
        "minutes_to_99_val": Figure("training minutes to 99% clean val plate accuracy", "min"),
        "minutes_to_99.9_val": Figure("training minutes to 99.9% clean val plate accuracy",
                                      "min"),
        "minutes_to_97_foreign": Figure("training minutes to 97% of the foreign split", "min"),
        "minutes_to_99_foreign": Figure("training minutes to 99% of the foreign split", "min"),
        "train_minutes": Figure("training minutes, whole run", "min", 10, False),
        "wall_minutes": Figure("wall minutes, whole run (evaluations, export included)", "min"),
        "test_plate_accuracy": Figure("test plate accuracy, best weights", "", 0.999),
        "heldout_plate_accuracy": Figure("held-out fonts plate accuracy", "", 0.99),
        "test_aug_plate_accuracy": Figure("augmented test plate accuracy", "", 0.99),
        "foreign_plate_accuracy": Figure("foreign split (Cairo, other fonts) plate accuracy",
                                         "", 0.97),
        "captcha_plate_accuracy": Figure("captcha split (the captcha package) plate accuracy",
                                         ""),
    },
}

_barrier = None


def _init_worker(barrier) -> None:
    global _barrier
    _barrier = barrier


def _warm_glyphs(families: Sequence[Sequence[fonts.Face]], style: writer.PlateStyle) -> None:
    for family in families:
        for face in family:
            for size in range(style.font_size_min, style.font_size_max + 1):
                render.load_glyphs(face.path, size, style.alphabet)


def _busy_loop(iterations: int) -> None:
    total = 0
    for i in range(iterations):
        total += i * i


def _timed_worker(rank: int, phases: Sequence[tuple[str, str, int, int]],
                  families: Sequence[Sequence[fonts.Face]], style: writer.PlateStyle,
                  work_dir: str, seed: int) -> dict:
    """One worker process: warm its glyph cache, then do its part of each phase in turn."""
    started = time.perf_counter()
    _warm_glyphs(families, style)
    result = {"warmup_s": time.perf_counter() - started}
    population = records.label_population(style.alphabet, style.plate_length)
    for name, kind, workers, amount in phases:
        _barrier.wait()  # a phase starts once every worker has finished the one before
        if rank >= workers:
            continue
        started = time.perf_counter()
        if kind == "busy_loop":
            _busy_loop(amount)
            result[name] = {"seconds": time.perf_counter() - started}
            continue
        labels = np.random.default_rng([seed, rank]).integers(population, size=amount)
        augmented = ("train",) if kind == "augmented_plates" else ()
        task = writer.ShardTask(os.path.join(work_dir, name), "train", rank, workers,
                                rank * amount, labels, families,
                                dataclasses.replace(style, augmented_splits=augmented), seed)
        shard = writer.write_shard(task)  # render, encode, frame, sha256, write, fsync, rename
        result[name] = {"seconds": time.perf_counter() - started, "rss_mb": shard["max_rss_mb"]}
    return result


def _steady_state_run(families: Sequence[Sequence[fonts.Face]], num_plates: int,
                      work_dir: str, seed: int) -> dict[str, float]:
    """One repeat in two fresh processes: the busy loop, then plates, alone and together."""
    style = writer.PlateStyle()
    # A pure-Python loop, alone then on both workers, shows how far this machine's two CPUs
    # scale at all: shared virtual CPUs often give less than 2x whatever the code does.
    loop = 1000 * num_plates  # about as long as the plates
    phases = (("loop_one", "busy_loop", 1, loop), ("loop_two", "busy_loop", 2, loop),
              ("short", "plates", 1, max(1, num_plates // 10)),
              ("one", "plates", 1, num_plates), ("two", "plates", 2, num_plates),
              ("augmented", "augmented_plates", 1, num_plates))
    for name, kind, _, _ in phases:
        if kind != "busy_loop":
            os.makedirs(os.path.join(work_dir, name))
    # Fresh processes each repeat: ru_maxrss is a high-water mark of the whole process life.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context, initializer=_init_worker,
                                                initargs=(barrier,)) as pool:
        futures = [pool.submit(_timed_worker, rank, phases, families, style, work_dir, seed)
                   for rank in range(2)]
        done, _ = concurrent.futures.wait(futures,
                                          return_when=concurrent.futures.FIRST_EXCEPTION)
        if any(future.exception() for future in done):
            barrier.abort()  # the other worker waits for the failed one: release it
        first, second = [future.result() for future in futures]

    def together(phase: str) -> float:
        return max(first[phase]["seconds"], second[phase]["seconds"])

    one = num_plates / first["one"]["seconds"]
    return {
        "glyph_warmup_s": max(first["warmup_s"], second["warmup_s"]),
        "plates_per_s_1_worker": one,
        "plates_per_s_2_workers": 2 * num_plates / together("two"),
        "plates_per_s_per_worker_2_workers": num_plates / together("two"),
        "speedup_2_workers": 2 * num_plates / together("two") / one,
        "augmented_plates_per_s_1_worker": num_plates / first["augmented"]["seconds"],
        "augmented_slowdown_1_worker": first["augmented"]["seconds"] / first["one"]["seconds"],
        "busy_loop_speedup_2_processes": 2 * first["loop_one"]["seconds"] / together("loop_two"),
        "peak_rss_mb_short_run": first["short"]["rss_mb"],
        "peak_rss_mb_long_run": first["one"]["rss_mb"],
        "peak_rss_mb_2_workers": max(first["two"]["rss_mb"], second["two"]["rss_mb"]),
    }


def _dataset_run(font_dir: str, counts: dict[str, int], output_dir: str,
                 seed: int) -> dict[str, float]:
    """make_records' work as its main function does it, timed from font checks to metadata."""
    render.load_glyphs.cache_clear()  # check_fit below must start cold, as in a fresh command
    style = writer.PlateStyle()
    started = time.perf_counter()
    labels = records.draw_labels(counts, style.alphabet, style.lengths, seed)
    train, _ = fonts.usable_faces(font_dir, style.alphabet, fonts.TRAIN, MIN_FONT_FAMILIES)
    heldout, _ = fonts.usable_faces(font_dir, style.alphabet, fonts.HELDOUT,
                                    1 if counts["heldout"] else 0)
    writer.check_fit(train + heldout, style)
    info = writer.write_dataset(output_dir, labels, DEFAULT_SHARDS,
                                {"train": train, "heldout": heldout}, style, seed, workers=2)
    seconds = time.perf_counter() - started
    plates = sum(counts.values())
    return {"dataset_plates": plates, "dataset_s": seconds,
            "dataset_plates_per_s": plates / seconds,
            "dataset_peak_rss_mb_per_worker": info["max_worker_rss_mb"]}


def records_stage(font_dir: str, num_plates: int, repeats: int, dataset_scale: float,
                  work_dir: str, seed: int = 0) -> dict[str, float]:
    """Plates per second and peak memory of the record writers, 1 and 2 workers.

    Steady state: each worker first draws every train face at every size (timed apart as
    glyph_warmup_s), then renders, encodes, frames, hashes and writes plates to a file that it
    fsyncs. Process start and warm-up are left out of the plates/s; the make_records run
    (dataset_*) includes everything but the interpreter's start. A pure-Python busy loop on
    the same two workers gives the machine's own 2-process scaling, to judge the speedup by.

    Args:
      font_dir: the gathered fonts and manifest.
      num_plates: plates per worker in each timed run (the short run writes a tenth).
      repeats: runs per figure; each figure is the median.
      dataset_scale: the make_records run's size as a fraction of the default (0: skip it).
      work_dir: an existing folder to write into (each repeat removes its files).
      seed: seed of labels and plates.
    Returns:
      {figure: median}, the keys of FIGURES["records"].
    """
    train, _ = fonts.usable_faces(font_dir, writer.PlateStyle().alphabet, fonts.TRAIN,
                                  MIN_FONT_FAMILIES)
    families = fonts.group_by_family(train)
    counts = {split: round(count * dataset_scale) for split, count in DEFAULT_DATASET.items()}
    runs = []
    for repeat in range(repeats):
        run_dir = os.path.join(work_dir, f"repeat-{repeat}")
        try:
            figures = _steady_state_run(families, num_plates, run_dir, seed)
            if dataset_scale > 0:
                figures.update(_dataset_run(font_dir, counts, os.path.join(run_dir, "dataset"),
                                            seed))
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        runs.append(figures)
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# ---------------------------------------------------------------- measuring

def _measured(function, args: tuple) -> tuple[dict, float, float]:
    import keras  # noqa: F401 (loaded before the baseline, as every stage loads it)
    import tensorflow  # noqa: F401
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = function(*args)
    return figures, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, baseline


def run_measured(function, *args) -> tuple[dict, float, float]:
    """Runs function(*args) alone in a fresh (spawned) process.

    Returns:
      (its figures, the process's peak RSS in MB, its RSS in MB after importing TensorFlow and
       Keras, before any work).
    """
    context = multiprocessing.get_context("spawn")  # forking a process with TF loaded can hang
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measured, function, args).result()


def median_seconds(run, repeats: int) -> float:
    """Calls run() once to warm up, then `repeats` times: the median seconds of those."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


# ---------------------------------------------------------------- table

def _format_value(value: float) -> str:
    if math.isinf(value):
        return "not reached"
    if 0 < abs(value) < 1:
        return f"{value:.4f}"  # accuracies: 0.9992 must not print as 1.00
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.2f}"


def format_table(results: dict[str, dict[str, float]]) -> str:
    """The figures of every stage measured, one row each, with its target and verdict.

    A stage named "train <config>" prints with the figures of "train".
    """
    rows = [("stage", "figure", "value", "unit", "target")]
    for stage, figures in results.items():
        for key, value in figures.items():
            figure = FIGURES[stage.split()[0]][key]
            shown, target = _format_value(value), ""
            if figure.target is not None:
                met = value >= figure.target if figure.at_least else value < figure.target
                target = (f"{'>=' if figure.at_least else '<'} {_format_value(figure.target)} "
                          f"{'met' if met else 'MISSED'}")
                # 0.996 must not print as 1.00 beside ">= 1 MISSED": more decimals until it shows.
                decimals = 3
                while (math.isfinite(value) and decimals < 9
                       and float(shown.replace(",", "")) == figure.target != value):
                    shown, decimals = f"{value:,.{decimals}f}", decimals + 1
            rows.append((stage, figure.label, shown, figure.unit, target))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.rjust(width) if i == 2 else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    return "\n".join(lines)
