"""The model stages of bin/benchmark: training examples/s (custom loop against model.fit),
SavedModel throughput and latency, and time to accuracy. TensorFlow is imported inside the
functions, which run in their own processes (figures.run_measured).
"""

import contextlib
import math
import os
import shutil
import statistics
import sys
import time

import numpy as np

from plate_ocr.data import records
from plate_ocr.benchmark.figures import BATCH, FIGURES, median_seconds, run_measured


def _train_setup(config):
    import tensorflow as tf
    return records.read_info(config.records_dir), tf.distribute.OneDeviceStrategy("/cpu:0")


def _custom_loop(config, steps: int, repeats: int) -> dict:
    """Examples/s of Trainer.train_loop, called as train_and_evaluate calls it."""
    import tensorflow as tf
    from plate_ocr.training import trainer as trainer_lib
    info, strategy = _train_setup(config)
    trainer = trainer_lib.Trainer(config, info, strategy, (repeats + 1) * steps,
                                  files={"train": records.split_files(
                                      info, config.records_dir, "train")},
                                  lost={"train": 0})
    iterator = iter(trainer.dataset("train", training=True))

    def run():
        done = 0
        while done < steps:
            count = min(config.steps_per_loop, steps - done)
            sums, _ = trainer.train_loop(iterator, tf.constant(count))
            float(sums["loss"])  # wait for the result
            done += count
    seconds = median_seconds(run, repeats)
    return {"batch_size": config.batch_size, "parameters": trainer.model.count_params(),
            "custom_examples_per_s": steps * config.batch_size / seconds}


def _fit(config, steps: int, repeats: int) -> dict:
    """Examples/s of model.fit on the same model, optimizer, batch and tf.data pipeline."""
    import keras
    import tensorflow as tf
    from plate_ocr.training import input_pipeline, model as model_lib, trainer
    info, strategy = _train_setup(config)
    with strategy.scope():
        model = model_lib.build_crnn(config.model, info["image_height"], info["image_width"],
                                     len(info["alphabet"]) + 1)
        optimizer = trainer.make_optimizer(config, (repeats + 1) * steps)
        optimizer.build(model.trainable_variables)
        # keras.losses.CTC's blank is class 0 and it counts a label's length as its nonzero
        # entries: labels move up by one, and in this model class 0 is the blank. Same shapes
        # and work as ours (blank last), the classes permuted.
        model.compile(optimizer=optimizer, loss=keras.losses.CTC())
    dataset = input_pipeline.make_dataset(
        records.split_files(info, config.records_dir, "train"), config.batch_size, True,
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


def train_stage(config, steps: int, repeats: int,
                pipeline_examples_per_s: float | None = None) -> tuple[dict[str, float], dict]:
    """Training examples/s of one config: our custom loop, and model.fit on the same model.

    Each runs under OneDeviceStrategy in its own process: one untimed run of `steps` steps
    (tracing, shuffle buffer), then `repeats` timed runs of `steps` steps on the same iterator.

    Args:
      config: a trainer.TrainConfig (of configs/cpu.cfg, say), with the records to train on.
      steps: training steps per timed run.
      repeats: timed runs; each figure is the median.
      pipeline_examples_per_s: the input pipeline's figure, for the ratio (None: left out).
    Returns:
      ({figure: value} of FIGURES["train"],
       {"fit_jit_compile": what compile's "auto" chose, "rss_mb_after_import": of TF, Keras}).
    """
    custom, custom_rss, baseline = run_measured(_custom_loop, config, steps, repeats)
    fit, fit_rss, _ = run_measured(_fit, config, steps, repeats)
    jit = fit.pop("fit_jit_compile")
    figures = {**custom, **fit, "custom_over_fit": custom["custom_examples_per_s"]
               / fit["fit_examples_per_s"]}
    if pipeline_examples_per_s is not None:
        figures["pipeline_over_custom"] = (pipeline_examples_per_s
                                           / custom["custom_examples_per_s"])
    figures.update(custom_peak_rss_mb=custom_rss, fit_peak_rss_mb=fit_rss)
    return ({key: figures[key] for key in FIGURES["train"] if key in figures},
            {"fit_jit_compile": jit, "rss_mb_after_import": baseline})


def _split_plates(records_dir: str, split: str, batches: int) -> tuple[np.ndarray, list[str]]:
    """The first `batches` batches of 256 plates of a split (fewer if the split is smaller)
    and their labels."""
    import itertools
    from plate_ocr.serving import evaluate
    read = list(itertools.islice(evaluate.read_split(records_dir, split, BATCH), batches))
    return (np.concatenate([batch["image"] for batch in read]),
            sum((batch["text"] for batch in read), []))


def _inference(model_path: str, records_dir: str, batches: int, calls: int, repeats: int,
               threads: int | None) -> dict:
    """Batched plates/s and the readings' accuracy on val plates and, where the records have
    it, on as many foreign plates (on all threads), or, on `threads` threads, the latency of
    one plate per call."""
    import tensorflow as tf
    from plate_ocr.serving import evaluate
    if threads and not model_path.endswith(".tflite"):  # before TensorFlow first runs
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    predict, shape = evaluate.load_predictor(model_path, threads)  # None: every core
    info = records.read_info(records_dir)
    if tuple(shape) != (info["image_height"], info["image_width"]):
        raise ValueError(f"the model reads {shape[0]}x{shape[1]} plates, the records in "
                         f"{records_dir} are {info['image_height']}x{info['image_width']}")
    val, truths = _split_plates(records_dir, "val", batches)
    plates = np.resize(val, (batches * BATCH, *shape))  # the val plates, cycled if too few
    if threads:
        latencies = []

        def single():
            latencies.append([])
            for i in range(calls):
                started = time.perf_counter()
                predict(plates[i % len(plates)][None])
                latencies[-1].append(1000 * (time.perf_counter() - started))
        median_seconds(single, repeats)
        timed = latencies[1:]  # the first run warmed up
        suffix = "" if threads == 1 else f"_{threads}_threads"
        return {f"single_p50_ms{suffix}": statistics.median(np.percentile(run, 50)
                                                            for run in timed),
                f"single_p99_ms{suffix}": statistics.median(np.percentile(run, 99)
                                                            for run in timed)}
    readings = []

    def batched():
        readings.clear()
        for i in range(batches):
            readings.extend(predict(plates[i * BATCH:(i + 1) * BATCH])[0])
    figures = {"batch_plates_per_s": batches * BATCH / median_seconds(batched, repeats),
               "val_plate_accuracy": evaluate.plate_metrics(truths, readings)["plate_accuracy"]}
    if "foreign" in info["splits"]:
        foreign, foreign_truths = _split_plates(records_dir, "foreign", batches)
        foreign_readings = sum((predict(foreign[i:i + BATCH])[0]
                                for i in range(0, len(foreign), BATCH)), [])
        figures["foreign_plate_accuracy"] = evaluate.plate_metrics(
            foreign_truths, foreign_readings)["plate_accuracy"]
    return figures


def _tflite_inference(model_path: str, records_dir: str, batches: int, calls: int,
                      repeats: int) -> dict:
    """_inference batched, then on 1 and 2 threads, of a TFLite model in one process: each
    interpreter has threads of its own (export.load_tflite), not the process's TensorFlow's."""
    figures = {}
    for threads in (None, 1, 2):
        figures.update(_inference(model_path, records_dir, batches, calls, repeats, threads))
    return figures


def _size_mb(model_path: str) -> float:
    """Megabytes of what load_predictor loads: a file, or the SavedModel's files."""
    from plate_ocr.serving import evaluate
    model_path = evaluate.model_path(model_path)
    if os.path.isfile(model_path):
        return os.path.getsize(model_path) / 1e6
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(model_path) for name in names) / 1e6


def inference_stage(model_path: str, records_dir: str, batches: int, calls: int,
                    repeats: int) -> tuple[dict[str, float], dict]:
    """Plates/s of a model at batch 256 on all cores, its latency on one plate per call on one
    thread (a camera's plates one by one, on one core) and on two, its accuracy on the plates
    it read (and on foreign plates) and its size.

    The model is loaded as bin/evaluate and bin/predict load it (evaluate.load_predictor:
    uint8 plates in, Python strings and confidences out), and reads val plates: batched in
    one process, one by one in two others whose TensorFlow has one thread, then two (a
    TFLite model: all three in one process, each with an interpreter of those threads).

    Args:
      model_path: a model dir, its SavedModel, .keras or .tflite file.
      records_dir: records with a val split of the model's image size.
      batches: batches of 256 per timed run (the accuracy is over their plates).
      calls: one-plate calls per timed run (p50 and p99 over these).
      repeats: timed runs, after an untimed one; each figure is the median.
    Returns:
      ({figure: value} of FIGURES["inference"], {"rss_mb_after_import": of TF and Keras}).
    """
    if model_path.endswith(".tflite"):
        figures, rss, baseline = run_measured(_tflite_inference, model_path, records_dir,
                                              batches, calls, repeats)
    else:
        figures, rss, baseline = run_measured(_inference, model_path, records_dir, batches,
                                              calls, repeats, None)
        for threads in (1, 2):
            figures.update(run_measured(_inference, model_path, records_dir, batches, calls,
                                        repeats, threads)[0])
    return ({**figures, "size_mb": _size_mb(model_path), "peak_rss_mb": rss},
            {"rss_mb_after_import": baseline})


TESSERACT = ("tesseract", "stdout", "--psm", "7", "-c", "tessedit_char_whitelist=0123456789")


def _tesseract(records_dir: str, plates: int, repeats: int, work_dir: str) -> dict:
    import subprocess
    from PIL import Image
    from plate_ocr.serving import evaluate
    images, truths = _split_plates(records_dir, "val", math.ceil(plates / BATCH))
    images, truths = images[:plates], truths[:plates]
    folder = os.path.join(work_dir, "tesseract")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{i:05d}.png") for i in range(len(images))]
    for path, image in zip(paths, images):
        plate = Image.fromarray(image)
        plate.resize((2 * plate.width, 2 * plate.height), Image.BICUBIC).save(path)
    listing = os.path.join(folder, "plates.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths) + "\n")
    outputs = []

    def run():
        done = subprocess.run((TESSERACT[0], listing) + TESSERACT[1:], capture_output=True,
                              text=True, check=True, env=dict(os.environ, OMP_THREAD_LIMIT="1"))
        outputs.append(done.stdout)
    seconds = median_seconds(run, repeats)
    # One page per image, each ended by a form feed.
    readings = ["".join(page.split()) for page in outputs[-1].split("\f")[:len(paths)]]
    return {"plates_per_s": len(paths) / seconds, "ms_per_plate": 1000 * seconds / len(paths),
            "val_plate_accuracy": evaluate.plate_metrics(truths, readings)["plate_accuracy"]}


def tesseract_stage(records_dir: str, plates: int, repeats: int,
                    work_dir: str) -> dict[str, float] | None:
    """Tesseract 5 on val plates, as a user would run it instead of training anything.

    One process over a list of the plates as PNG files upscaled 2x, one thread
    (OMP_THREAD_LIMIT=1), one line of text (--psm 7), digits only: its reading of a plate is
    its page's characters less the spaces. The plates are read in a process of their own
    (TensorFlow reads the records).

    Args:
      records_dir: records with a val split.
      plates: the first val plates to read.
      repeats: timed runs, after an untimed one; the time is the median.
      work_dir: a folder for the PNG files.
    Returns:
      {figure: value} of FIGURES["tesseract"], or None when `tesseract` is not installed.
    """
    if not shutil.which(TESSERACT[0]):
        return None
    return run_measured(_tesseract, records_dir, plates, repeats, work_dir)[0]


def _time_to_accuracy(config, model_dir: str, curve_path: str) -> dict:
    import json
    from plate_ocr.serving import evaluate
    from plate_ocr.training import distribute, model as model_lib, train
    records_dir = config.records_dir
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
    for split, targets in (("", (0.99, 0.995)), ("val", (0.99, 0.999)),
                           ("foreign", (0.97, 0.99))):
        for target, entry in train.time_to_accuracy(history, targets, split).items():
            name = f"minutes_to_{100 * target:g}" + (f"_{split}" if split else "")
            figures[name] = entry["minutes"] if entry else math.inf
    figures["train_minutes"] = result["train_seconds"] / 60
    figures["wall_minutes"] = wall / 60
    figures["test_plate_accuracy"] = result["test"]["plate_accuracy"]
    predict = evaluate.load_predictor(model_dir)[0]
    for split in ("heldout", "test_aug", "foreign", "captcha"):
        if info["splits"].get(split, {}).get("num_examples"):
            report, _ = evaluate.evaluate_split(predict, records_dir, split)
            figures[f"{split}_plate_accuracy"] = report["plate_accuracy"]
    return figures


def time_to_accuracy_stage(config, model_dir: str,
                           curve_path: str) -> tuple[dict[str, float], dict]:
    """Trains a config from scratch through bin/train's code path and times its accuracy.

    The run is train.train_and_evaluate under the default strategy (records, tf.data, the
    custom loop), in its own process; the milestones are the first validations at or above
    99%, 99.5% and 99.9% (training time, evaluation excluded).

    Args:
      config: a trainer.TrainConfig (of configs/fast.cfg, say), with the records to train on.
      model_dir: an empty folder for the run.
      curve_path: where the run's time-to-accuracy PNG is copied.
    Returns:
      ({figure: value} of FIGURES["time_to_accuracy"]; a target never reached is inf),
      {"rss_mb_after_import": of TF and Keras, "peak_rss_mb"}).
    """
    figures, rss, baseline = run_measured(_time_to_accuracy, config, model_dir, curve_path)
    return figures, {"rss_mb_after_import": baseline, "peak_rss_mb": rss}
