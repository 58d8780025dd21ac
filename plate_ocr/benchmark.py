"""Speed and memory of each pipeline stage on this machine: one function per stage, one table.

A stage function takes plain arguments and returns {figure: value}, each the median over
repeats after a warm-up; FIGURES says how each figure prints and the target it is held to.
Stages that need TensorFlow import it inside their function: the records stage and its workers
never load it. Each TensorFlow measurement runs alone in a fresh process (run_measured), so its
peak RSS is its own and not the high-water mark of everything measured before it.
"""

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from plate_ocr import fonts, records, render, writer

# make_records' default flags: the dataset that the "under 20 s" target is about.
DEFAULT_DATASET = {"train": 60000, "val": 5000, "test": 10000, "heldout": 2000, "test_aug": 2000}
DEFAULT_SHARDS = {"train": 16, "val": 2, "test": 2, "heldout": 2, "test_aug": 2}
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
        "batch_plates_per_s": Figure("SavedModel (uint8 in, text out), batch 256", "plates/s",
                                     2000),
        "single_p50_ms": Figure("SavedModel, 1 plate per call: median latency", "ms", 10,
                                False),
        "single_p99_ms": Figure("SavedModel, 1 plate per call: 99th percentile", "ms"),
        "peak_rss_mb": Figure("peak RSS of the inference process", "MB"),
    },
    "time_to_accuracy": {
        "parameters": Figure("model parameters", "weights"),
        "examples_per_s": Figure("training examples/s (all epochs, first included)",
                                 "examples/s"),
        "minutes_to_99": Figure("training minutes to 99% val plate accuracy", "min"),
        "minutes_to_99.5": Figure("training minutes to 99.5% val plate accuracy", "min"),
        "minutes_to_99.9": Figure("training minutes to 99.9% val plate accuracy", "min", 3,
                                  False),
        "examples_to_99.9": Figure("training examples to 99.9% val plate accuracy",
                                   "examples"),
        "train_minutes": Figure("training minutes, whole run", "min"),
        "wall_minutes": Figure("wall minutes, whole run (evaluations, export included)", "min"),
        "test_plate_accuracy": Figure("test plate accuracy, best weights", "", 0.999),
        "heldout_plate_accuracy": Figure("held-out fonts plate accuracy", ""),
        "test_aug_plate_accuracy": Figure("augmented test plate accuracy", ""),
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
        task = writer.ShardTask(os.path.join(work_dir, name), "train", rank, workers,
                                rank * amount, labels, families, style, seed)
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
              ("one", "plates", 1, num_plates), ("two", "plates", 2, num_plates))
    for name, kind, _, _ in phases:
        if kind == "plates":
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
    labels = records.draw_labels(counts, style.alphabet, style.plate_length, seed)
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


# ---------------------------------------------------------------- TensorFlow stages

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


def _median_seconds(run, repeats: int) -> float:
    """Calls run() once to warm up, then `repeats` times: the median seconds of those."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _normalized(dataset):
    """Both pipelines end the same way: float32 pixels in 0..1, in parallel, prefetched."""
    import tensorflow as tf
    return (dataset.map(lambda images, *rest: (tf.cast(images, tf.float32) / 255.0, *rest),
                        num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _pipeline_rate(dataset, examples: int, repeats: int) -> float:
    """Examples/s of pulling batches of BATCH from a dataset (one untimed pass first)."""
    iterator = iter(dataset)
    batches = max(1, examples // BATCH)

    def run():
        for _ in range(batches):
            next(iterator)
    return batches * BATCH / _median_seconds(run, repeats)


def _tfrecord_pipeline(records_dir: str, examples: int, repeats: int) -> dict:
    from plate_ocr import input_pipeline
    info = records.read_info(records_dir)
    dataset = input_pipeline.make_dataset(
        records.split_files(info, records_dir, "train"), BATCH, True, info["image_height"],
        info["image_width"], info["plate_length"], seed=0)
    return {"tfrecord_examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _png_pipeline(png_dir: str, info: dict, examples: int, repeats: int) -> dict:
    import tensorflow as tf
    shape = [info["image_height"], info["image_width"]]
    alphabet = tf.constant(list(info["alphabet"]))

    def load(path):
        image = tf.ensure_shape(tf.io.decode_png(tf.io.read_file(path), channels=1)[..., 0],
                                shape)
        # The label is in the name, <index>_<text>.png.
        text = tf.strings.split(tf.strings.split(path, os.sep)[-1], "_")[-1]
        chars = tf.strings.bytes_split(tf.strings.substr(text, 0, info["plate_length"]))
        label = tf.argmax(tf.cast(chars[:, None] == alphabet[None, :], tf.int32), axis=1,
                          output_type=tf.int32)
        return image, label

    dataset = (tf.data.Dataset.list_files(os.path.join(png_dir, "*.png"), shuffle=True, seed=0)
               .repeat()
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
               .batch(BATCH, drop_remainder=True))
    return {"png_examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _service_pipeline(records_dir: str, service: str, examples: int, repeats: int) -> dict:
    from plate_ocr import input_pipeline
    info = records.read_info(records_dir)
    dataset = input_pipeline.make_service_dataset(
        records.split_files(info, records_dir, "train"), BATCH, info["image_height"],
        info["image_width"], info["plate_length"], service, seed=0)
    return {"examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _start_data_service(log_dir: str, role: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts `plate_ocr data_service` on a free port and waits for its "serving" line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = os.path.join(log_dir, f"{role}-{port}.log")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "plate_ocr", "data_service", f"--role={role}",
             f"--port={port}", *args], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=root))
    deadline = time.monotonic() + 120
    while "data_service: " not in open(log_path).read():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"data_service --role={role} did not start: "
                               + open(log_path).read()[-500:])
        time.sleep(0.2)
    return process, port


def service_pipeline_stage(records_dir: str, examples: int, repeats: int,
                           work_dir: str) -> dict[str, float]:
    """Examples/s of the training pipeline through a tf.data service on this machine.

    A dispatcher and one, then two, worker processes (bin/data_service) on loopback; the
    client (input_pipeline.make_service_dataset, distributed_epoch) in a fresh process, ending
    in the same float32 /255 map as the in-process figure. On one machine the workers share
    the cores with the client: this is the service's overhead, not a scale-out figure.

    Args:
      records_dir: the records (train split).
      examples: examples per timed pass.
      repeats: timed passes; each figure is the median.
      work_dir: an existing folder for the servers' logs (removed afterwards).
    Returns:
      {"service_1_worker_examples_per_s", "service_2_workers_examples_per_s"}.
    """
    log_dir = os.path.join(work_dir, "data_service")
    os.makedirs(log_dir)
    servers, figures = [], {}
    try:
        dispatcher, port = _start_data_service(log_dir, "dispatcher",
                                               f"--work_dir={os.path.join(log_dir, 'journal')}")
        servers.append(dispatcher)
        for count, key in ((1, "service_1_worker_examples_per_s"),
                           (2, "service_2_workers_examples_per_s")):
            while len(servers) < 1 + count:
                servers.append(_start_data_service(log_dir, "worker",
                                                   f"--dispatcher=localhost:{port}")[0])
            figures[key] = run_measured(_service_pipeline, records_dir,
                                        f"grpc://localhost:{port}", examples,
                                        repeats)[0]["examples_per_s"]
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait()
        shutil.rmtree(log_dir, ignore_errors=True)
    return figures


def write_png_folder(records_dir: str, png_dir: str, count: int) -> dict:
    """Writes `count` plates of the val split (cycled if it has fewer) as <index>_<text>.png.

    Returns:
      the records' dataset_info.
    """
    from PIL import Image
    from plate_ocr import evaluate
    info = records.read_info(records_dir)
    if not info["splits"].get("val", {}).get("num_examples"):
        raise ValueError(f"{records_dir} has no val plates to write as PNGs")
    os.makedirs(png_dir)
    written = 0
    while written < count:
        for batch in evaluate.read_split(records_dir, "val"):
            for image, text in zip(batch["image"], batch["text"]):
                if written == count:
                    break
                Image.fromarray(image).save(os.path.join(png_dir, f"{written:06d}_{text}.png"))
                written += 1
    return info


def pipeline_stage(records_dir: str, examples: int, png_files: int, repeats: int,
                   work_dir: str) -> tuple[dict[str, float], dict]:
    """Examples/s of our input pipeline and of a folder of PNGs, batch 256, from page cache.

    Ours is input_pipeline.make_dataset on the train split (shuffled, as in training). The
    other reads the val plates the way the original project stored them, one PNG per plate
    (written here first, then read through once so both come from the page cache). Both end
    in the same float32 /255 map, so neither is spared the normalization. The training
    pipeline is measured through a local tf.data service too (service_pipeline_stage).

    Args:
      records_dir: the records (train split, and val for the PNGs).
      examples: examples per timed pass of our pipeline.
      png_files: PNG files written; each timed pass of the PNG pipeline reads as many, in
        whole batches (at least one).
      repeats: timed passes of each; each figure is the median.
      work_dir: an existing folder for the PNGs (removed afterwards).
    Returns:
      ({figure: value} of FIGURES["pipeline"], {"rss_mb_after_import": of TF and Keras}).
    """
    png_dir = os.path.join(work_dir, "png")
    try:
        info = run_measured(write_png_folder, records_dir, png_dir, png_files)[0]
        ours, ours_rss, baseline = run_measured(_tfrecord_pipeline, records_dir, examples,
                                                repeats)
        png, png_rss, _ = run_measured(_png_pipeline, png_dir, info, max(png_files, BATCH),
                                       repeats)
    finally:
        shutil.rmtree(png_dir, ignore_errors=True)
    service = service_pipeline_stage(records_dir, examples, repeats, work_dir)
    figures = {**ours, **png, "tfrecord_over_png": ours["tfrecord_examples_per_s"]
               / png["png_examples_per_s"], "tfrecord_peak_rss_mb": ours_rss,
               "png_peak_rss_mb": png_rss, **service,
               "tfrecord_over_service_1_worker": ours["tfrecord_examples_per_s"]
               / service["service_1_worker_examples_per_s"]}
    return figures, {"rss_mb_after_import": baseline}


def _train_setup(flagfile: str, records_dir: str):
    import tensorflow as tf
    from plate_ocr import cli_train
    config = cli_train.config_from(flagfile, f"--records_dir={records_dir}")
    return config, records.read_info(records_dir), tf.distribute.OneDeviceStrategy("/cpu:0")


def _custom_loop(flagfile: str, records_dir: str, steps: int, repeats: int) -> dict:
    """Examples/s of Trainer.train_loop, called as train_and_evaluate calls it."""
    import tensorflow as tf
    from plate_ocr import train
    config, info, strategy = _train_setup(flagfile, records_dir)
    trainer = train.Trainer(config, info, strategy, (repeats + 1) * steps,
                            files={"train": records.split_files(info, records_dir, "train")},
                            lost={"train": 0})
    iterator = iter(trainer.dataset("train", training=True, seed=config.seed))

    def run():
        done = 0
        while done < steps:
            count = min(config.steps_per_loop, steps - done)
            sums, _ = trainer.train_loop(iterator, tf.constant(count))
            float(sums["loss"])  # wait for the result
            done += count
    seconds = _median_seconds(run, repeats)
    return {"batch_size": config.batch_size, "parameters": trainer.model.count_params(),
            "custom_examples_per_s": steps * config.batch_size / seconds}


def _fit(flagfile: str, records_dir: str, steps: int, repeats: int) -> dict:
    """Examples/s of model.fit on the same model, optimizer, batch and tf.data pipeline."""
    import keras
    import tensorflow as tf
    from plate_ocr import input_pipeline, model as model_lib, train
    config, info, strategy = _train_setup(flagfile, records_dir)
    with strategy.scope():
        model = model_lib.build_crnn(config.model, info["image_height"], info["image_width"],
                                     len(info["alphabet"]) + 1)
        optimizer = train.make_optimizer(config, (repeats + 1) * steps)
        optimizer.build(model.trainable_variables)
        # keras.losses.CTC's blank is class 0 and it counts a label's length as its nonzero
        # entries: labels move up by one, and in this model class 0 is the blank. Same shapes
        # and work as ours (blank last), the classes permuted.
        model.compile(optimizer=optimizer, loss=keras.losses.CTC())
    dataset = input_pipeline.make_dataset(
        records.split_files(info, records_dir, "train"), config.batch_size, True,
        info["image_height"], info["image_width"], info["plate_length"],
        shuffle_buffer=config.shuffle_buffer, seed=config.seed)
    dataset = dataset.map(lambda images, labels, _: (tf.cast(images, tf.float32), labels + 1),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.started = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimes()
    # One call: the iterator (and its full shuffle buffer) lives on across epochs; the first
    # epoch is the warm-up (tracing, buffer fill).
    model.fit(dataset, epochs=repeats + 1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return {"fit_examples_per_s": steps * config.batch_size
            / statistics.median(timer.seconds[1:]), "fit_jit_compile": bool(model.jit_compile)}


def train_stage(flagfile: str, records_dir: str, steps: int, repeats: int,
                pipeline_examples_per_s: float | None = None) -> tuple[dict[str, float], dict]:
    """Training examples/s of one config: our custom loop, and model.fit on the same model.

    Each runs under OneDeviceStrategy in its own process: one untimed run of `steps` steps
    (tracing, shuffle buffer), then `repeats` timed runs of `steps` steps on the same iterator.

    Args:
      flagfile: a training config (configs/cpu.cfg); its records_dir is replaced.
      records_dir: the records to train on.
      steps: training steps per timed run.
      repeats: timed runs; each figure is the median.
      pipeline_examples_per_s: the input pipeline's figure, for the ratio (None: left out).
    Returns:
      ({figure: value} of FIGURES["train"],
       {"fit_jit_compile": what compile's "auto" chose, "rss_mb_after_import": of TF, Keras}).
    """
    custom, custom_rss, baseline = run_measured(_custom_loop, flagfile, records_dir, steps,
                                                repeats)
    fit, fit_rss, _ = run_measured(_fit, flagfile, records_dir, steps, repeats)
    jit = fit.pop("fit_jit_compile")
    figures = {**custom, **fit, "custom_over_fit": custom["custom_examples_per_s"]
               / fit["fit_examples_per_s"]}
    if pipeline_examples_per_s is not None:
        figures["pipeline_over_custom"] = (pipeline_examples_per_s
                                           / custom["custom_examples_per_s"])
    figures.update(custom_peak_rss_mb=custom_rss, fit_peak_rss_mb=fit_rss)
    return ({key: figures[key] for key in FIGURES["train"] if key in figures},
            {"fit_jit_compile": jit, "rss_mb_after_import": baseline})


def _inference(model_path: str, records_dir: str, batches: int, calls: int,
               repeats: int) -> dict:
    import itertools
    from plate_ocr import evaluate
    predict, shape = evaluate.load_predictor(model_path)
    info = records.read_info(records_dir)
    if tuple(shape) != (info["image_height"], info["image_width"]):
        raise ValueError(f"the model reads {shape[0]}x{shape[1]} plates, the records in "
                         f"{records_dir} are {info['image_height']}x{info['image_width']}")
    val = np.concatenate([batch["image"] for batch in itertools.islice(
        evaluate.read_split(records_dir, "val", BATCH), batches)])
    plates = np.resize(val, (batches * BATCH, *shape))  # the val plates, cycled if too few

    def batched():
        for i in range(batches):
            predict(plates[i * BATCH:(i + 1) * BATCH])
    batch_seconds = _median_seconds(batched, repeats)

    latencies = []

    def single():
        latencies.append([])
        for i in range(calls):
            started = time.perf_counter()
            predict(plates[i % len(plates)][None])
            latencies[-1].append(1000 * (time.perf_counter() - started))
    _median_seconds(single, repeats)
    timed = latencies[1:]  # the first run warmed up
    return {"batch_plates_per_s": batches * BATCH / batch_seconds,
            "single_p50_ms": statistics.median(np.percentile(run, 50) for run in timed),
            "single_p99_ms": statistics.median(np.percentile(run, 99) for run in timed)}


def inference_stage(model_path: str, records_dir: str, batches: int, calls: int,
                    repeats: int) -> tuple[dict[str, float], dict]:
    """Plates/s of the SavedModel at batch 256, and its latency on one plate per call.

    The model is loaded as bin/evaluate and bin/predict load it (evaluate.load_predictor:
    uint8 plates in, Python strings and confidences out), and reads val plates.

    Args:
      model_path: a model dir, its SavedModel, .keras or .tflite file.
      records_dir: records with a val split of the model's image size.
      batches: batches of 256 per timed run.
      calls: one-plate calls per timed run (p50 and p99 over these).
      repeats: timed runs, after an untimed one; each figure is the median.
    Returns:
      ({figure: value} of FIGURES["inference"], {"rss_mb_after_import": of TF and Keras}).
    """
    figures, rss, baseline = run_measured(_inference, model_path, records_dir, batches, calls,
                                          repeats)
    return {**figures, "peak_rss_mb": rss}, {"rss_mb_after_import": baseline}


def _time_to_accuracy(flagfile: str, records_dir: str, model_dir: str, curve_path: str) -> dict:
    import json
    from plate_ocr import cli_train, distribute, evaluate, model as model_lib, train
    config = cli_train.config_from(flagfile, f"--records_dir={records_dir}")
    started = time.perf_counter()
    # The run's progress lines go to stderr: stdout is the table (or the JSON).
    with contextlib.redirect_stdout(sys.stderr):
        result = train.train_and_evaluate(config, model_dir, distribute.make_strategy("auto"))
    wall = time.perf_counter() - started
    shutil.copyfile(os.path.join(model_dir, train.CURVE_FILE), curve_path)
    history = json.load(open(os.path.join(model_dir, train.HISTORY_FILE)))
    info = records.read_info(records_dir)
    figures = {"parameters": model_lib.build_crnn(
        config.model, info["image_height"], info["image_width"],
        len(info["alphabet"]) + 1).count_params()}
    figures["examples_per_s"] = history[-1]["examples"] / history[-1]["train_seconds"]
    for target, entry in train.time_to_accuracy(history).items():
        name = f"{100 * target:g}"
        figures[f"minutes_to_{name}"] = entry["minutes"] if entry else math.inf
        if target == train.TARGETS[-1]:
            figures[f"examples_to_{name}"] = entry["examples"] if entry else math.inf
    figures["train_minutes"] = result["train_seconds"] / 60
    figures["wall_minutes"] = wall / 60
    figures["test_plate_accuracy"] = result["test"]["plate_accuracy"]
    predict = evaluate.load_predictor(model_dir)[0]
    for split in ("heldout", "test_aug"):
        if info["splits"].get(split, {}).get("num_examples"):
            report, _ = evaluate.evaluate_split(predict, records_dir, split)
            figures[f"{split}_plate_accuracy"] = report["plate_accuracy"]
    return figures


def time_to_accuracy_stage(flagfile: str, records_dir: str, model_dir: str,
                           curve_path: str) -> tuple[dict[str, float], dict]:
    """Trains a config from scratch through bin/train's code path and times its accuracy.

    The run is train.train_and_evaluate under the default strategy (records, tf.data, the
    custom loop), in its own process; the milestones are the first validations at or above
    99%, 99.5% and 99.9% (training time, evaluation excluded).

    Args:
      flagfile: the training config (configs/fast.cfg); its records_dir is replaced.
      records_dir: the records to train on.
      model_dir: an empty folder for the run.
      curve_path: where the run's time-to-accuracy PNG is copied.
    Returns:
      ({figure: value} of FIGURES["time_to_accuracy"]; a target never reached is inf),
      {"rss_mb_after_import": of TF and Keras, "peak_rss_mb"}).
    """
    figures, rss, baseline = run_measured(_time_to_accuracy, flagfile, records_dir, model_dir,
                                          curve_path)
    return figures, {"rss_mb_after_import": baseline, "peak_rss_mb": rss}


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
