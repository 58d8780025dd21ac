"""train_and_evaluate(config, model_dir, strategy): the custom training loop.

A Trainer (trainer.py) runs the steps; here the run around them: epochs counted in steps,
validation every epoch driving early stopping and keeping the best weights, checkpoints,
TensorBoard summaries, the time-to-accuracy curve and the exports.
"""

import contextlib
import dataclasses
import json
import math
import os
import resource
import threading
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from plate_ocr.data import records
from plate_ocr.serving import export, pictures
from plate_ocr.training import ctc, distribute, input_pipeline, plate_format
from plate_ocr.training.trainer import TrainConfig, Trainer, TrainingError, corrupt_records_error
from plate_ocr.training.trainer import steps_per_epoch

BEST_WEIGHTS = "best"  # a TensorFlow checkpoint prefix in the model dir
HISTORY_FILE = "history.json"
CURVE_FILE = "time_to_accuracy.png"
TARGETS = (0.99, 0.995, 0.999)  # validation plate accuracies the time-to-accuracy figures name


def _read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _write_json(path: str, value) -> None:
    """Writes aside and renames: a crash never leaves half a file (tf.io.gfile: gs:// too)."""
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _model_keys_changed(model_dir: str, description: dict) -> list[str]:
    """What of the model's shape differs from the run in model_dir (which must exist)."""
    old = _read_json(os.path.join(model_dir, export.CONFIG_FILE))
    keys = ("image_height", "image_width", "alphabet", "plate_length", "plate_lengths", "model")
    return [key for key in keys if old.get(key) != description.get(key)]


def _check_model_dir(model_dir: str, description: dict) -> None:
    """Refuses a model dir written for another model or image size; a resumed run's plate
    format is the one its exports (and bin/export later) use."""
    path = os.path.join(model_dir, export.CONFIG_FILE)
    if tf.io.gfile.exists(path):
        changed = _model_keys_changed(model_dir, description)
        if changed:
            raise TrainingError(f"{model_dir} holds a run of another configuration ({', '.join(changed)} "
                                "differ): use a new --model_dir")
        old = _read_json(path)
        if old.get("plate_format", "") != description["plate_format"]:
            _write_json(path, dict(old, plate_format=description["plate_format"]))
    else:
        tf.io.gfile.makedirs(model_dir)
        _write_json(path, description)


def _check_init_from(model_dir: str, description: dict) -> tuple[str, str]:
    """The best-weights checkpoint of another run to start from, checked against this model.

    Another alphabet is allowed (its output layer is rebuilt), and another plate length
    (CTC reads any length with the same weights).

    Returns:
      (the checkpoint, the alphabet that run read).
    Raises:
      TrainingError: no such run, no best weights, or another model shape or image size.
    """
    best = os.path.join(model_dir, BEST_WEIGHTS)
    if not tf.io.gfile.exists(best + ".index") or not tf.io.gfile.exists(
            os.path.join(model_dir, export.CONFIG_FILE)):
        raise TrainingError(f"--init_from {model_dir}: no trained run there (no {BEST_WEIGHTS} "
                            "weights and config.json)")
    changed = [key for key in _model_keys_changed(model_dir, description)
               if key not in ("alphabet", "plate_length", "plate_lengths")]
    if changed:
        raise TrainingError(f"--init_from {model_dir}: that run has another "
                            f"{', '.join(changed)}; start from a run of the same model shape")
    return best, _read_json(os.path.join(model_dir, export.CONFIG_FILE))["alphabet"]


def _mixed_source(records_dir: str, info: dict, skip_corrupt: bool
                  ) -> tuple[list[str], tuple[list[str], int, int] | None, list[int]]:
    """Records mixed into the training plates (--mix_records): their training shards, their
    validation split's (shards, records, records lost) or None when they have none, and
    their plate lengths.

    Raises:
      TrainingError: no such records, no training plates, plates of another shape or
        alphabet than the run's own records, or longer plates than those.
    """
    try:
        other = records.read_info(records_dir)
        if not other["splits"].get("train", {}).get("num_examples"):
            raise ValueError("no training plates there")
        files, _ = input_pipeline.readable_files(other, records_dir, "train", skip_corrupt)
        val = None
        if other["splits"].get("val", {}).get("num_examples"):
            val_files, lost = input_pipeline.readable_files(other, records_dir, "val",
                                                            skip_corrupt)
            val = val_files, other["splits"]["val"]["num_examples"], lost
    except (OSError, ValueError) as error:
        raise TrainingError(f"--mix_records {records_dir}: {error}") from None
    for key in ("image_height", "image_width", "alphabet"):
        if other[key] != info[key]:
            raise TrainingError(f"--mix_records {records_dir}: its {key} is {other[key]!r}, the "
                                f"run's records have {info[key]!r}")
    # Shorter plates end in PAD in the run's batches; longer ones would not fit them.
    if other["plate_length"] > info["plate_length"]:
        raise TrainingError(f"--mix_records {records_dir}: its plates have up to "
                            f"{other['plate_length']} characters, the run's records "
                            f"{info['plate_length']}: pass the longer ones as --records_dir")
    return files, val, records.plate_lengths(other)


def _image_summary(trainer: Trainer, sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    images, labels = sample
    logits = trainer.model(tf.cast(images, tf.float32), training=False)
    alphabet = trainer.info["alphabet"]
    decoded = ctc.format_decode(logits, trainer.length_masks)[0]
    predictions, truths = ([text.decode() for text in ctc.to_strings(read, alphabet).numpy()]
                           for read in (decoded, tf.constant(labels)))
    return pictures.prediction_grid(list(images), predictions, truths)


def _summary_sample(info: dict, files: list[str], count: int) -> tuple[np.ndarray, np.ndarray]:
    dataset = input_pipeline.make_dataset(files, count, False, info["image_height"],
                                          info["image_width"], info["plate_length"])
    images, labels, weights = next(iter(dataset))
    keep = int(tf.reduce_sum(weights))
    return images.numpy()[:keep], labels.numpy()[:keep]


def _write_scalars(writer, step: int, values: dict) -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)


def _train_epoch(trainer: Trainer, iterator, num_steps: int, model_dir: str,
                 chief: bool) -> dict:
    """Runs one epoch of steps, in loops of steps_per_loop, profiling the configured window
    (on the chief)."""
    config = trainer.config
    totals, done, started = {}, 0, time.perf_counter()
    with tqdm(total=num_steps, unit="step", leave=False, disable=not chief,
              desc=f"epoch {int(trainer.epoch) + 1}", mininterval=1.0) as bar:
        while done < num_steps:
            step = int(trainer.step)
            count = min(config.steps_per_loop, num_steps - done)
            window = config.profile_steps
            if window and step < window[0]:
                count = min(count, window[0] - step)
            profiling = bool(window) and window[0] <= step < window[1]
            if profiling:
                # A step at a time on every worker (their loops stay in step), traced on the
                # chief only: the profiler's stop crashed the other worker of a two-worker
                # MultiWorkerMirrored run 1 time in 5 (segfault, invalid munmap).
                count = 1
                if step == window[0] and chief:
                    tf.profiler.experimental.start(model_dir)
                with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                    sums, bad = trainer.train_loop(iterator, tf.constant(count))
                if step + 1 == window[1] and chief:
                    tf.profiler.experimental.stop()
            else:
                sums, bad = trainer.train_loop(iterator, tf.constant(count))
            if int(bad) >= 0:
                raise TrainingError(f"loss is not finite at step {int(bad)}: lower "
                                    "--learning_rate or set --clip_norm")
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            done += count
            bar.update(count)
            bar.set_postfix(loss=f"{totals['loss'] / totals['plates']:.3f}", refresh=False)
    seconds = time.perf_counter() - started
    trainer.train_seconds.assign_add(seconds)
    return dict(ctc.rates(totals), loss=totals["loss"] / totals["plates"],
                examples_per_second=totals["plates"] / seconds)


def _stall_guard(trainer: Trainer, manager: tf.train.CheckpointManager):
    """Arms the trainer's stall guard (if any) for the training steps of one epoch."""
    config = trainer.config
    if not trainer.stall_guard:
        return contextlib.nullcontext()
    source = (f"the data service {config.data_service}: are its workers up?"
              if config.data_service else "the records:")
    checkpoint = manager.latest_checkpoint  # <dir>/ckpt-<step>
    kept = (f"the last checkpoint (step {checkpoint.rsplit('-', 1)[-1]}) is kept; re-run to "
            "resume" if checkpoint else "no checkpoint was written yet; re-run to start again")
    return trainer.stall_guard.armed(f"no training batch for {config.data_timeout:g} s from "
                                     f"{source} {kept}")


def _release_aside(box: list) -> threading.Thread:
    """Empties `box`, which holds the last reference to a finished epoch's training iterator,
    on a thread of its own, and returns that thread.

    tf.data's iterator destructor waits for the threads of its pipeline to stop; between some
    epochs of fast.cfg's rendered stream that took from 6 s to over a minute (a py-spy stack:
    ~IteratorResource in ~LogicalThreadWrapper), while the run did nothing else. Released
    aside, the wait overlaps the validation and the next epoch.
    """
    thread = threading.Thread(target=box.clear, name="release-iterator")
    thread.start()
    return thread


def epochs_in_budget(history: list[dict], train_seconds: float, max_minutes: float,
                     epochs: int, done: int) -> int:
    """The epochs a run trains: `epochs`, or fewer where another epoch as long as those
    before would end past max_minutes of training (0: no budget); `done` epochs are trained,
    and the first always is.

    An epoch's length is the mean of the epochs after the first (the first's alone while it
    is the only one: it traces the step), so that one slower or faster epoch moves the plan,
    and the learning rate's schedule with it, less than the last epoch's length would."""
    if not max_minutes or not history:
        return epochs
    first = history[0]["train_seconds"]
    length = ((history[-1]["train_seconds"] - first) / (len(history) - 1) if len(history) > 1
              else first)
    more = math.floor((60 * max_minutes - train_seconds) / length) if length > 0 else epochs
    return max(done, min(epochs, done + more))


def time_to_accuracy(history: list[dict], targets=TARGETS,
                     split: str = "") -> dict[float, dict | None]:
    """The first history entry at or above each validation plate accuracy (None: never).

    Args:
      history: the run's entries, one per epoch.
      targets: plate accuracies.
      split: a watched split (TrainConfig.watch_splits), or "" for the validation split.
    Returns:
      {target: {"minutes", "examples", "epoch", "plate_accuracy"} or None}.
    """
    def accuracy(e):
        return (e.get("watch", {}).get(split, {}) if split else e["val"]).get(
            "plate_accuracy", -1.0)

    reached = {}
    for target in targets:
        entry = next((e for e in history if accuracy(e) >= target), None)
        reached[target] = entry and {
            "minutes": entry["train_seconds"] / 60, "examples": entry["examples"],
            "epoch": entry["epoch"], "plate_accuracy": accuracy(entry)}
    return reached


def format_time_to_accuracy(reached: dict[float, dict | None]) -> str:
    """One line: minutes and examples to each target."""
    return "  ".join(f"{100 * target:g}%: " + (
        f"{entry['minutes']:.2f} min ({entry['examples']:,} ex)" if entry else "not reached")
        for target, entry in reached.items())


def train_and_evaluate(config: TrainConfig, model_dir: str,
                       strategy: tf.distribute.Strategy) -> dict:
    """Trains (or resumes) until the epochs, patience or time run out; exports the best weights
    (unless config.export is off).

    Args:
      config: the run's configuration.
      model_dir: checkpoints, TensorBoard logs, history and exports go here.
      strategy: the tf.distribute strategy to train under.
    Returns:
      {"val": metrics, "test": metrics, "epochs", "steps", "train_seconds", "peak_rss_mb",
       "exports": {format: path}, empty without config.export} of the best weights.
    Raises:
      TrainingError, FileNotFoundError, ValueError: with one-line messages.
    """
    info = records.read_info(config.records_dir)
    mixed = [(records_dir, fraction, *_mixed_source(records_dir, info, config.skip_corrupt))
             for records_dir, fraction in config.mix_records]
    # The run reads the lengths of its records' plates and of the mixed sources'.
    lengths = sorted(set(records.plate_lengths(info)).union(
        *(source_lengths for *_, source_lengths in mixed)))
    if len(lengths) > 1:
        info = dict(info, plate_lengths=lengths)
    chief = distribute.is_chief(strategy)
    out_dir = distribute.writer_dir(model_dir, strategy)
    description = {"image_height": info["image_height"], "image_width": info["image_width"],
                   "alphabet": info["alphabet"], "plate_length": info["plate_length"],
                   "model": dataclasses.asdict(config.model), "train": dataclasses.asdict(config),
                   "plate_format": config.plate_format}
    if len(lengths) > 1:  # plates of several lengths
        description["plate_lengths"] = lengths
    description["model"] = json.loads(json.dumps(description["model"]))  # tuples -> lists
    # A format that cannot be read fails now, not after the training.
    formats = plate_format.for_model(config.plate_format, info["alphabet"], lengths)
    _check_model_dir(out_dir, description)
    epoch_steps = steps_per_epoch(config, info)
    if not info["splits"].get(config.val_split, {}).get("num_examples"):
        raise TrainingError(f"the records in {config.records_dir} have no {config.val_split} "
                            "plates to validate on: write them with bin/make_records")
    files, lost = {}, {}
    # Rendered training plates need no training records (the atlas is checked instead).
    splits = (config.val_split, "test") if config.source == "render" else (
        "train", config.val_split, "test")
    watched = tuple(split for split in config.watch_splits
                    if info["splits"].get(split, {}).get("num_examples")
                    and split != config.val_split)
    for split in splits + watched:
        if info["splits"].get(split, {}).get("num_examples"):
            files[split], lost[split] = input_pipeline.readable_files(
                info, config.records_dir, split, config.skip_corrupt)
            if lost[split] and chief:
                print(f"skipping corrupt or missing shards of {split}: "
                      f"{lost[split]} of {info['splits'][split]['num_examples']} records lost")
    # Each mixed source's validation split is watched too, as "<dir>:val".
    mix, counts = [], {}
    for records_dir, fraction, train_files, val, _ in mixed:
        mix.append((train_files, fraction))
        if val:
            name = f"{records_dir}:val"
            files[name], counts[name], lost[name] = val
            watched += (name,)
    trainer = Trainer(config, info, strategy, config.epochs * epoch_steps, files, lost,
                      tuple(mix), counts)
    manager = tf.train.CheckpointManager(trainer.checkpoint, os.path.join(out_dir, "checkpoints"),
                                         max_to_keep=3, step_counter=trainer.step)
    if manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if chief:
            print(f"resumed from {manager.latest_checkpoint} (epoch {int(trainer.epoch)}, "
                  f"step {int(trainer.step)})")
    elif config.init_from:
        # Only a fresh run starts from other weights: a resumed one has its own.
        checkpoint, alphabet = _check_init_from(config.init_from, description)
        trainer.start_from(checkpoint, len(alphabet) + 1)
        if chief:
            print(f"starting from the best weights of {config.init_from}" + (
                "" if alphabet == info["alphabet"] else
                f"; its output layer (alphabet {alphabet}) rebuilt for {info['alphabet']}"))
    history_path = os.path.join(out_dir, HISTORY_FILE)
    history = _read_json(history_path) if tf.io.gfile.exists(history_path) else []
    train_writer = tf.summary.create_file_writer(os.path.join(out_dir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(out_dir, "val"))
    sample = _summary_sample(info, files[config.val_split], config.num_image_summaries)

    def plan(planned: int) -> int:
        """The epochs the run trains, the learning rate's decay ending with the last of them:
        config.epochs, or fewer when the time budget will stop the run first. A run that has
        trained its planned epochs ends there, though the budget may have room for another:
        its rate is down, and another epoch would start it up again."""
        if not config.max_minutes or int(trainer.epoch) >= planned:
            return planned
        now = trainer.plan_epochs(epochs_in_budget(
            history, float(trainer.train_seconds), config.max_minutes, config.epochs,
            int(trainer.epoch)), epoch_steps)
        if chief and now != planned and now < config.epochs:
            tqdm.write(f"the time budget ({config.max_minutes:g} min of training) leaves "
                       f"{now} of {config.epochs} epochs: the learning rate comes down by "
                       f"step {now * epoch_steps}")
        return now

    planned = plan(config.epochs)

    def finished() -> bool:
        return int(trainer.epoch) >= planned or int(trainer.bad_epochs) >= config.patience

    releasing = None
    while not finished():
        # A fresh iterator per epoch, seeded by the epoch: the data a resumed run sees is the
        # data the uninterrupted run saw, without checkpointing a shuffle buffer. Only the
        # box holds it, so that it is released aside when the epoch's steps are done.
        epoch_iterator = [iter(trainer.dataset("train", training=True,
                                               epoch=int(trainer.epoch)))]
        try:
            with _stall_guard(trainer, manager):
                train = _train_epoch(trainer, epoch_iterator[0], epoch_steps, out_dir, chief)
        except tf.errors.DataLossError as error:
            if "train" not in files:  # rendered plates: not a shard's fault
                raise
            raise corrupt_records_error(error, files["train"]) from None
        if releasing:
            releasing.join()  # the last epoch's, long done: one release at a time
        releasing = _release_aside(epoch_iterator)
        trainer.epoch.assign_add(1)
        # Validated, kept and shown: the weights' average when there is one.
        with trainer.averaged_weights():
            val = trainer.evaluate(config.val_split)
            improved = val["loss"] < float(trainer.best_val_loss) - config.min_delta
            if improved:
                # A TF checkpoint, not .h5: it is written aside and renamed when whole, and a
                # full disk raises an error (h5py crashed the process on ENOSPC here).
                tf.train.Checkpoint(model=trainer.model).write(os.path.join(out_dir,
                                                                            BEST_WEIGHTS))
            predictions = _image_summary(trainer, sample)
            # Watched, never chosen by: the kept weights follow val_split alone.
            watch = {split: trainer.evaluate(split) for split in watched}
        if improved:
            trainer.best_val_loss.assign(val["loss"])
            trainer.bad_epochs.assign(0)
        else:
            trainer.bad_epochs.assign_add(1)
        step, epoch = int(trainer.step), int(trainer.epoch)
        learning_rate = float(tf.convert_to_tensor(trainer.optimizer.learning_rate))
        _write_scalars(train_writer, step, {
            "loss": train["loss"], "plate_accuracy": train["plate_accuracy"],
            "char_accuracy": train["char_accuracy"], "learning_rate": learning_rate,
            "examples_per_second": train["examples_per_second"]})
        _write_scalars(val_writer, step, {
            "loss": val["loss"], "plate_accuracy": val["plate_accuracy"],
            "char_accuracy": val["char_accuracy"], "cer": val["cer"]})
        for split, metrics in watch.items():
            _write_scalars(val_writer, step, {f"{split}/plate_accuracy": metrics["plate_accuracy"],
                                              f"{split}/loss": metrics["loss"]})
        with val_writer.as_default(step=step):
            tf.summary.image("predictions", predictions[None], max_outputs=1)
        # The time-to-accuracy curve: TensorBoard's x axis is the step, so this scalar's step is
        # whole seconds of training (evaluation excluded), those of the history's entry.
        seconds = round(float(trainer.train_seconds), 2)
        with val_writer.as_default(step=round(seconds)):
            tf.summary.scalar("plate_accuracy_by_train_seconds", val["plate_accuracy"])
        history.append({"epoch": epoch, "step": step, "train_seconds": seconds,
                        "examples": step * config.batch_size, "train": train, "val": val,
                        "watch": watch})
        _write_json(history_path, history)
        manager.save(checkpoint_number=step)
        if chief:
            tqdm.write(f"epoch {epoch:3d}  step {step:6d}  loss {train['loss']:.4f}  "
                       f"val loss {val['loss']:.4f}  val plate acc {val['plate_accuracy']:.4f}  "
                       f"char acc {val['char_accuracy']:.4f}  "
                       f"{train['examples_per_second']:.0f} ex/s  "
                       f"{float(trainer.train_seconds) / 60:.1f} min"
                       + "".join(f"  {split} {metrics['plate_accuracy']:.4f}"
                                 for split, metrics in watch.items())
                       + ("  *best" if improved else ""))
        planned = plan(planned)
    if releasing:
        releasing.join()
    best = os.path.join(out_dir, BEST_WEIGHTS)
    if tf.io.gfile.exists(best + ".index"):
        tf.train.Checkpoint(model=trainer.model).read(best).expect_partial()
    result = {"val": trainer.evaluate(config.val_split), "epochs": int(trainer.epoch),
              "lost_records": lost, "steps": int(trainer.step),
              "train_seconds": float(trainer.train_seconds)}
    if info["splits"].get("test", {}).get("num_examples"):
        result["test"] = trainer.evaluate("test")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reached = time_to_accuracy(history)
    reached_watched = {split: time_to_accuracy(history, split=split) for split in watched}
    result["time_to_accuracy"] = {str(target): entry for target, entry in reached.items()}
    for split, entries in reached_watched.items():
        result[f"time_to_accuracy_{split}"] = {str(t): entry for t, entry in entries.items()}
    if chief and history:
        pictures.time_to_accuracy_png(history, os.path.join(out_dir, CURVE_FILE), TARGETS,
                                      f"{os.path.basename(os.path.abspath(model_dir))}: "
                                      "validation accuracy against training time")
        print(f"time to {config.val_split} accuracy: " + format_time_to_accuracy(reached))
        for split, entries in reached_watched.items():
            print(f"time to {split} accuracy: " + format_time_to_accuracy(entries))
    result["exports"] = export.export_model(
        trainer.model, config.model, out_dir, info["alphabet"], formats,
        *trainer.shape) if config.export else {}
    _write_json(os.path.join(out_dir, "final_metrics.json"), result)
    if not chief:
        tf.io.gfile.rmtree(out_dir)
    return result
