"""train_and_evaluate(config, model_dir, strategy): the custom training loop.

One tf.function runs `steps_per_loop` steps in a tf.range loop around strategy.run; epochs are
counted in steps; validation every epoch drives early stopping and keeps the best weights;
checkpoints hold everything needed to resume (step, weights, optimizer, early-stopping state).
"""

import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from plate_ocr import ctc, data_service, distribute, export, input_pipeline, model as model_lib
from plate_ocr import pictures, records, render_source, writer

SUM = tf.distribute.ReduceOp.SUM
BEST_WEIGHTS = "best"  # a TensorFlow checkpoint prefix in the model dir
HISTORY_FILE = "history.json"
CURVE_FILE = "time_to_accuracy.png"
TARGETS = (0.99, 0.995, 0.999)  # validation plate accuracies the time-to-accuracy figures name


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the CLI builds it from flags)."""

    records_dir: str = "tfrecords"
    model: model_lib.ModelConfig = model_lib.ModelConfig()
    batch_size: int = 256  # global: split across replicas
    eval_batch_size: int = 256
    learning_rate: float = 3e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (to min_lr_ratio * learning_rate)
    warmup_steps: int = 0
    decay_steps: int = 0  # 0: decay over the whole run
    min_lr_ratio: float = 0.0
    clip_norm: float = 0.0  # global gradient norm clip, 0: off
    epochs: int = 55
    steps_per_epoch: int = 0  # 0: one pass over the training split
    steps_per_loop: int = 50
    patience: int = 5
    min_delta: float = 0.0
    shuffle_buffer: int = 10000
    seed: int = 0
    max_minutes: float = 0.0  # stop after this much training time (0: no limit)
    profile_steps: tuple[int, int] | None = None
    num_image_summaries: int = 16
    skip_corrupt: bool = False  # leave corrupt shards out (counting their records), not stop
    mixed_precision: str = ""  # "", "bfloat16" or "float16": Keras' mixed_* policy
    jit_compile: bool = False  # XLA-compile the per-replica step
    ema_momentum: float = 0.0  # evaluate, keep and export an average of the weights (0: off)
    data_service: str = ""  # grpc://HOST:PORT: the training input runs on a tf.data service
    source: str = "records"  # "records", or "render": new training plates from the glyph atlas
    render_augment: bool = False  # with source "render": augment_ops' effects on the plates
    init_from: str = ""  # a model dir whose best weights start a fresh run (fine-tuning)
    data_timeout: float = 0.0  # stop when no training batch arrives for this long (0: wait)


class TrainingError(Exception):
    """Training cannot go on: a one-line reason."""


def steps_per_epoch(config: TrainConfig, info: dict) -> int:
    """Training steps between validations: the configured number, or one pass of the records."""
    num_train = info["splits"]["train"]["num_examples"]
    return config.steps_per_epoch or max(num_train // config.batch_size, 1)


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam with the configured warm-up and decay."""
    rate = config.learning_rate
    if config.lr_schedule == "cosine" or config.warmup_steps:
        decay = config.decay_steps or max(total_steps - config.warmup_steps, 1)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if config.warmup_steps else config.learning_rate,
            decay_steps=decay,
            alpha=config.min_lr_ratio if config.lr_schedule == "cosine" else 1.0,
            warmup_target=config.learning_rate if config.warmup_steps else None,
            warmup_steps=config.warmup_steps)
    return keras.optimizers.Adam(rate, global_clipnorm=config.clip_norm or None)


def _model_keys_changed(model_dir: str, description: dict) -> list[str]:
    """What of the model's shape differs from the run in model_dir (which must exist)."""
    with open(os.path.join(model_dir, export.CONFIG_FILE), encoding="utf-8") as f:
        old = json.load(f)
    keys = ("image_height", "image_width", "alphabet", "plate_length", "model")
    return [key for key in keys if old.get(key) != description[key]]


def _check_model_dir(model_dir: str, description: dict) -> None:
    """Refuses a model dir written for another model or image size."""
    path = os.path.join(model_dir, export.CONFIG_FILE)
    if os.path.exists(path):
        changed = _model_keys_changed(model_dir, description)
        if changed:
            raise TrainingError(f"{model_dir} holds a run of another configuration ({', '.join(changed)} "
                                "differ): use a new --model_dir")
    else:
        os.makedirs(model_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(description, f, indent=1)


def _check_init_from(model_dir: str, description: dict) -> str:
    """The best-weights checkpoint of another run to start from, checked against this model.

    Raises:
      TrainingError: no such run, no best weights, or another model shape.
    """
    best = os.path.join(model_dir, BEST_WEIGHTS)
    if not tf.io.gfile.exists(best + ".index") or not os.path.exists(
            os.path.join(model_dir, export.CONFIG_FILE)):
        raise TrainingError(f"--init_from {model_dir}: no trained run there (no {BEST_WEIGHTS} "
                            "weights and config.json)")
    changed = _model_keys_changed(model_dir, description)
    if changed:
        raise TrainingError(f"--init_from {model_dir}: that run has another "
                            f"{', '.join(changed)}; start from a run of the same model shape")
    return best


def corrupt_records_error(error: tf.errors.DataLossError, files: list[str]) -> TrainingError:
    """A one-line error naming the corrupt shard among `files`."""
    path = input_pipeline.find_corrupt_file(files)
    where = path or f"one of {len(files)} shards in {os.path.dirname(files[0])}"
    return TrainingError(f"corrupt record in {where} ({error.message.splitlines()[0]}); "
                         "rewrite the records with bin/make_records --overwrite")


def _is_rng_state(variable) -> bool:
    """A Keras dropout layer's random-generator state, not a weight or a statistic."""
    return variable.path.endswith("seed_generator_state")


class Trainer:
    """The model, optimizer, compiled steps and state of one run under one strategy."""

    def __init__(self, config: TrainConfig, info: dict, strategy: tf.distribute.Strategy,
                 total_steps: int, files: dict[str, list[str]], lost: dict[str, int]):
        """files: the shards to read per split; lost: records of the shards left out."""
        self.config, self.info, self.strategy = config, info, strategy
        self.files, self.lost = files, lost
        self.atlas = (render_source.atlas_path(info, config.records_dir)
                      if config.source == "render" else "")
        # The effects and ranges the records were augmented with (make_records' flags).
        self.render_augment = (writer.style_from_info(info).augment
                               if config.render_augment else None)
        self.shape = (info["image_height"], info["image_width"])
        num_classes = len(info["alphabet"]) + 1
        # The initial weights and dropout masks follow the seed, so a resumed run and an
        # uninterrupted one are the same computation.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            # Layers take the policy in force when they are made (variables stay float32,
            # the logits are float32 by construction); it is reset at once so that
            # evaluation and export models made later are plain float32.
            if config.mixed_precision:
                keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
            try:
                self.model = model_lib.build_crnn(config.model, *self.shape, num_classes)
            finally:
                keras.mixed_precision.set_global_policy("float32")
            self.optimizer = make_optimizer(config, total_steps)
            if config.mixed_precision == "float16":
                # float16 gradients underflow without a loss scale; bfloat16 has float32's range.
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            # Built eagerly in the scope: Keras 23085 (Adam in a distributed tf.function).
            self.optimizer.build(self.model.trainable_variables)
            # The weights and BatchNorm's moving statistics are averaged together: averaged
            # weights under the statistics of the current ones read 95% where either pair
            # alone read 99.6% (measured). The dropout RNG states are not averaged.
            self.averaged = [variable for variable in self.model.variables
                             if not _is_rng_state(variable)] if config.ema_momentum else []
            # Updated by every replica with the same value: the first replica's is kept.
            self.averages = [tf.Variable(tf.convert_to_tensor(variable), trainable=False,
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                             for variable in self.averaged]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step, epoch=self.epoch,
            best_val_loss=self.best_val_loss, bad_epochs=self.bad_epochs,
            train_seconds=self.train_seconds, averages=self.averages,
            # Keras 3 keeps the dropout RNG states out of a tf.train.Checkpoint of the model.
            rng_states=[v for v in self.model.non_trainable_variables if _is_rng_state(v)])
        # Only the gradient step is XLA-compiled: the loop around it reads the iterator and
        # the metrics use EditDistance, neither of which XLA has. Off by default: on this CPU
        # it was slower (see BUILD-notes.md).
        self.gradient_step = tf.function(self._gradient_step, jit_compile=True) \
            if config.jit_compile else self._gradient_step
        # Outside the strategy's scope: the guard's stamp is a plain variable of this process.
        self.stall_guard = (data_service.StallGuard(config.data_timeout)
                            if config.data_timeout else None)
        self.train_loop = tf.function(self._train_loop)
        self.eval_step = tf.function(self._eval_step)

    def _gradient_step(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(tf.cast(images, tf.float32), training=True)
            per_example = ctc.per_example_loss(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.config.batch_size)
            # The identity but under float16, where the LossScaleOptimizer unscales.
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        if self.averages:
            # Debiased early on (as tf.train.ExponentialMovingAverage with num_updates): the
            # average forgets the random initialization within the first hundred steps.
            step = tf.cast(self.optimizer.iterations, tf.float32)
            momentum = tf.minimum(self.config.ema_momentum, (1 + step) / (10 + step))
            for average, variable in zip(self.averages, self.averaged):
                average.assign(momentum * average + (1 - momentum) * variable)
        return logits, per_example

    def _train_replica(self, images, labels, weights):
        logits, per_example = self.gradient_step(images, labels)
        sums = ctc.metric_sums(labels, ctc.greedy_decode(logits)[0], weights)
        sums["loss"] = tf.reduce_sum(per_example)
        return sums

    def _train_loop(self, iterator, num_steps):
        sums = {key: tf.constant(0.0) for key in ctc.SUM_KEYS + ("loss",)}
        first_bad_step = tf.constant(-1, tf.int64)
        for i in tf.range(num_steps):
            inputs = (self.stall_guard.next_batch(iterator, self.strategy) if self.stall_guard
                      else next(iterator))
            per_replica = self.strategy.run(self._train_replica, args=inputs)
            # Reduced inside the loop: per-replica values cannot leave a tf.range loop.
            batch = {k: self.strategy.reduce(SUM, v, axis=None) for k, v in per_replica.items()}
            bad = tf.logical_not(tf.math.is_finite(batch["loss"])) & (first_bad_step < 0)
            first_bad_step = tf.where(bad, self.step + tf.cast(i, tf.int64), first_bad_step)
            sums = {key: sums[key] + batch[key] for key in sums}
        self.step.assign_add(tf.cast(num_steps, tf.int64))
        return sums, first_bad_step

    def _eval_replica(self, images, labels, weights):
        if images.shape[0] == 0:
            # When a split has fewer batches left than there are replicas, the strategy hands
            # the others an empty batch of static size 0, on which Keras' LSTM cannot even be
            # traced (a 10,000-plate test split in batches of 128 under Mirrored on 2 devices
            # ended that way): it adds nothing to the sums.
            return {key: tf.constant(0.0) for key in ctc.SUM_KEYS + ("loss",)}
        logits = self.model(tf.cast(images, tf.float32), training=False)
        sums = ctc.metric_sums(labels, ctc.greedy_decode(logits)[0], weights)
        sums["loss"] = tf.reduce_sum(ctc.per_example_loss(labels, logits) * weights)
        return sums

    def _eval_step(self, batch):
        per_replica = self.strategy.run(self._eval_replica, args=batch)
        return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in per_replica.items()}

    def dataset(self, split: str, training: bool, epoch: int = 0):
        """The split distributed over the strategy's input pipelines.

        Training reads through the data service when there is one, and renders its plates
        when the source is "render"; `epoch` seeds the order (and picks the rendered plates),
        so that a resumed run sees what the uninterrupted one saw. Evaluation always reads the
        local records, so that it sees every example exactly once.
        """
        files = self.files.get(split, [])
        batch = self.config.batch_size if training else self.config.eval_batch_size
        service = self.config.data_service if training else ""
        seed = self.config.seed + epoch

        def dataset_fn(context: tf.distribute.InputContext):
            per_replica = context.get_per_replica_batch_size(batch)
            if training and self.config.source == "render":
                stride = render_source.epoch_chunks(
                    steps_per_epoch(self.config, self.info) * batch, self.config.shuffle_buffer,
                    context.num_input_pipelines)
                return render_source.make_render_dataset(
                    self.atlas, per_replica, *self.shape, self.info["plate_length"],
                    self.config.seed, epoch * stride, context, service,
                    self.config.shuffle_buffer, self.render_augment)
            if service:
                return input_pipeline.make_service_dataset(
                    files, per_replica, *self.shape, self.info["plate_length"], service,
                    input_context=context, shuffle_buffer=self.config.shuffle_buffer, seed=seed)
            return input_pipeline.make_dataset(
                files, per_replica, training, *self.shape, self.info["plate_length"],
                input_context=context, shuffle_buffer=self.config.shuffle_buffer, seed=seed)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def start_from(self, checkpoint: str) -> None:
        """Loads another run's best weights (and BatchNorm statistics); the average, if any,
        starts from them too."""
        tf.train.Checkpoint(model=self.model).read(checkpoint).assert_existing_objects_matched()
        for average, variable in zip(self.averages, self.averaged):
            average.assign(variable)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within: the model holds the weights' moving average (when there is one)."""
        if not self.averages:
            yield
            return
        variables = self.averaged
        current = [tf.identity(tf.convert_to_tensor(variable)) for variable in variables]
        for variable, average in zip(variables, self.averages):
            variable.assign(average)
        try:
            yield
        finally:
            for variable, value in zip(variables, current):
                variable.assign(value)

    def evaluate(self, split: str) -> dict:
        """Loss and metrics of the current weights over every example of a split."""
        totals = {}
        try:
            for batch in self.dataset(split, training=False):
                for key, value in self.eval_step(batch).items():
                    totals[key] = totals.get(key, 0.0) + float(value)
        except tf.errors.DataLossError as error:
            raise corrupt_records_error(error, self.files[split]) from None
        expected = self.info["splits"][split]["num_examples"] - self.lost[split]
        if round(totals.get("plates", 0)) != expected:
            raise TrainingError(f"evaluation of {split!r} saw {totals.get('plates', 0):.0f} "
                                f"plates, the metadata says {expected}")
        return dict(ctc.rates(totals), loss=totals["loss"] / totals["plates"])


def _image_summary(trainer: Trainer, sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    images, labels = sample
    logits = trainer.model(tf.cast(images, tf.float32), training=False)
    alphabet = trainer.info["alphabet"]
    predictions = [t.decode() for t in ctc.to_strings(ctc.greedy_decode(logits)[0],
                                                       alphabet).numpy()]
    truths = ["".join(alphabet[i] for i in label) for label in labels]
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
    """Runs one epoch of steps, in loops of steps_per_loop, profiling the configured window."""
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
                count = 1
                if step == window[0]:
                    tf.profiler.experimental.start(model_dir)
                with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                    sums, bad = trainer.train_loop(iterator, tf.constant(count))
                if step + 1 == window[1]:
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


def time_to_accuracy(history: list[dict], targets=TARGETS) -> dict[float, dict | None]:
    """The first history entry at or above each validation plate accuracy (None: never).

    Returns:
      {target: {"minutes", "examples", "epoch", "plate_accuracy"} or None}.
    """
    reached = {}
    for target in targets:
        entry = next((e for e in history if e["val"]["plate_accuracy"] >= target), None)
        reached[target] = entry and {
            "minutes": entry["train_seconds"] / 60, "examples": entry["examples"],
            "epoch": entry["epoch"], "plate_accuracy": entry["val"]["plate_accuracy"]}
    return reached


def format_time_to_accuracy(reached: dict[float, dict | None]) -> str:
    """One line: minutes and examples to each target."""
    return "  ".join(f"{100 * target:g}%: " + (
        f"{entry['minutes']:.2f} min ({entry['examples']:,} ex)" if entry else "not reached")
        for target, entry in reached.items())


def train_and_evaluate(config: TrainConfig, model_dir: str,
                       strategy: tf.distribute.Strategy) -> dict:
    """Trains (or resumes) until the epochs, patience or time run out; exports the best weights.

    Args:
      config: the run's configuration.
      model_dir: checkpoints, TensorBoard logs, history and exports go here.
      strategy: the tf.distribute strategy to train under.
    Returns:
      {"val": metrics, "test": metrics, "epochs", "steps", "train_seconds", "peak_rss_mb",
       "exports"} of the best weights.
    Raises:
      TrainingError, FileNotFoundError, ValueError: with one-line messages.
    """
    info = records.read_info(config.records_dir)
    chief = distribute.is_chief(strategy)
    out_dir = distribute.writer_dir(model_dir, strategy)
    description = {"image_height": info["image_height"], "image_width": info["image_width"],
                   "alphabet": info["alphabet"], "plate_length": info["plate_length"],
                   "model": dataclasses.asdict(config.model), "train": dataclasses.asdict(config)}
    description["model"] = json.loads(json.dumps(description["model"]))  # tuples -> lists
    _check_model_dir(out_dir, description)
    epoch_steps = steps_per_epoch(config, info)
    files, lost = {}, {}
    # Rendered training plates need no training records (the atlas is checked instead).
    splits = ("val", "test") if config.source == "render" else ("train", "val", "test")
    for split in splits:
        if info["splits"].get(split, {}).get("num_examples"):
            files[split], lost[split] = input_pipeline.readable_files(
                info, config.records_dir, split, config.skip_corrupt)
            if lost[split] and chief:
                print(f"skipping corrupt or missing shards of {split}: "
                      f"{lost[split]} of {info['splits'][split]['num_examples']} records lost")
    trainer = Trainer(config, info, strategy, config.epochs * epoch_steps, files, lost)
    manager = tf.train.CheckpointManager(trainer.checkpoint, os.path.join(out_dir, "checkpoints"),
                                         max_to_keep=3, step_counter=trainer.step)
    if manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if chief:
            print(f"resumed from {manager.latest_checkpoint} (epoch {int(trainer.epoch)}, "
                  f"step {int(trainer.step)})")
    elif config.init_from:
        # Only a fresh run starts from other weights: a resumed one has its own.
        trainer.start_from(_check_init_from(config.init_from, description))
        if chief:
            print(f"starting from the best weights of {config.init_from}")
    history_path = os.path.join(out_dir, HISTORY_FILE)
    history = json.load(open(history_path)) if os.path.exists(history_path) else []
    train_writer = tf.summary.create_file_writer(os.path.join(out_dir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(out_dir, "val"))
    sample = _summary_sample(info, files["val"], config.num_image_summaries)

    def finished() -> bool:
        return (int(trainer.epoch) >= config.epochs or int(trainer.bad_epochs) >= config.patience
                or (config.max_minutes and float(trainer.train_seconds) >= 60 * config.max_minutes))

    while not finished():
        # A fresh iterator per epoch, seeded by the epoch: the data a resumed run sees is the
        # data the uninterrupted run saw, without checkpointing a shuffle buffer.
        iterator = iter(trainer.dataset("train", training=True, epoch=int(trainer.epoch)))
        try:
            with _stall_guard(trainer, manager):
                train = _train_epoch(trainer, iterator, epoch_steps, out_dir, chief)
        except tf.errors.DataLossError as error:
            if "train" not in files:  # rendered plates: not a shard's fault
                raise
            raise corrupt_records_error(error, files["train"]) from None
        trainer.epoch.assign_add(1)
        # Validated, kept and shown: the weights' average when there is one.
        with trainer.averaged_weights():
            val = trainer.evaluate("val")
            improved = val["loss"] < float(trainer.best_val_loss) - config.min_delta
            if improved:
                # A TF checkpoint, not .h5: it is written aside and renamed when whole, and a
                # full disk raises an error (h5py crashed the process on ENOSPC here).
                tf.train.Checkpoint(model=trainer.model).write(os.path.join(out_dir,
                                                                            BEST_WEIGHTS))
            predictions = _image_summary(trainer, sample)
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
        with val_writer.as_default(step=step):
            tf.summary.image("predictions", predictions[None], max_outputs=1)
        # The time-to-accuracy curve: TensorBoard's x axis is the step, so this scalar's step is
        # whole seconds of training (evaluation excluded).
        with val_writer.as_default(step=round(float(trainer.train_seconds))):
            tf.summary.scalar("plate_accuracy_by_train_seconds", val["plate_accuracy"])
        history.append({"epoch": epoch, "step": step,
                        "train_seconds": round(float(trainer.train_seconds), 2),
                        "examples": step * config.batch_size, "train": train, "val": val})
        with open(history_path + ".tmp", "w") as f:
            json.dump(history, f, indent=1)
        os.replace(history_path + ".tmp", history_path)
        manager.save(checkpoint_number=step)
        if chief:
            tqdm.write(f"epoch {epoch:3d}  step {step:6d}  loss {train['loss']:.4f}  "
                       f"val loss {val['loss']:.4f}  val plate acc {val['plate_accuracy']:.4f}  "
                       f"char acc {val['char_accuracy']:.4f}  "
                       f"{train['examples_per_second']:.0f} ex/s  "
                       f"{float(trainer.train_seconds) / 60:.1f} min"
                       + ("  *best" if improved else ""))
    best = os.path.join(out_dir, BEST_WEIGHTS)
    if tf.io.gfile.exists(best + ".index"):
        tf.train.Checkpoint(model=trainer.model).read(best).expect_partial()
    result = {"val": trainer.evaluate("val"), "epochs": int(trainer.epoch), "lost_records": lost,
              "steps": int(trainer.step), "train_seconds": float(trainer.train_seconds)}
    if info["splits"].get("test", {}).get("num_examples"):
        result["test"] = trainer.evaluate("test")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reached = time_to_accuracy(history)
    result["time_to_accuracy"] = {str(target): entry for target, entry in reached.items()}
    if chief and history:
        pictures.time_to_accuracy_png(history, os.path.join(out_dir, CURVE_FILE), TARGETS,
                                      f"{os.path.basename(os.path.abspath(model_dir))}: "
                                      "validation accuracy against training time")
        print("time to validation accuracy: " + format_time_to_accuracy(reached))
    result["exports"] = export.export_model(trainer.model, config.model, out_dir,
                                            info["alphabet"], *trainer.shape)
    with open(os.path.join(out_dir, "final_metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not chief:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result
