"""Trainer: the model, optimizer, compiled steps and state of one run under one strategy.

The per-replica gradient step and metrics under strategy.run, one tf.function running
`steps_per_loop` steps in a tf.range loop, evaluation over every example of a split, the
datasets of each split (records, a tf.data service or rendered plates), the moving average of
the weights and the checkpoint that holds everything needed to resume. The run around it
(epochs, validation, early stopping, summaries, exports) is train.py.
"""

import contextlib
import dataclasses
import math
import os

import keras
import tensorflow as tf

from plate_ocr.data import records, writer
from plate_ocr.training import (align, ctc, data_service, distribute, input_pipeline,
                                model as model_lib, plate_format, render_source)

SUM = tf.distribute.ReduceOp.SUM

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
    # Training-time budget (0: none): no epoch starts that would end past it (judged by the
    # length of the last one), so a run of uniform epochs ends within it.
    max_minutes: float = 0.0
    profile_steps: tuple[int, int] | None = None
    num_image_summaries: int = 16
    skip_corrupt: bool = False  # leave corrupt shards out (counting their records), not stop
    mixed_precision: str = ""  # "", "bfloat16" or "float16": Keras' mixed_* policy
    jit_compile: bool = False  # XLA-compile the per-replica step
    ema_momentum: float = 0.0  # evaluate, keep and export an average of the weights (0: off)
    data_service: str = ""  # grpc://HOST:PORT: the training input runs on a tf.data service
    source: str = "records"  # "records", or "render": new training plates from the glyph atlas
    render_augment: bool = False  # with source "render": augment.py's effects on the plates
    render_clean_fraction: float = 0.0  # with render_augment: of the plates, left clean
    init_from: str = ""  # a model dir whose best weights start a fresh run (fine-tuning)
    # Other records dirs whose training plates make up these fractions of the training plates
    # (records_dir's give the rest): fine-tuning on a user's plates keeps seeing synthetic
    # ones, and does not forget them.
    mix_records: tuple[tuple[str, float], ...] = ()
    # The readings the exports may give (plate_format.py: "[A-Z]{2}[0-9]{3}", alternatives
    # with "|"); "": exactly plate_length characters of the alphabet.
    plate_format: str = ""
    data_timeout: float = 0.0  # stop when no training batch arrives for this long (0: wait)
    val_split: str = "val"  # validated each epoch: early stopping and the best weights
    # Also evaluated each epoch, for the record (time to accuracy on them), never to choose.
    watch_splits: tuple[str, ...] = ()
    # An extra CTC loss on the logits averaged over this many time steps (0: none), for the
    # first coarse_ctc_steps steps: a coarse alignment leaves the all-blank plateau sooner,
    # then gets in the way of condensed faces (docs/experiments.md, "Time to accuracy").
    coarse_ctc_pool: int = 0
    coarse_ctc_steps: int = 600
    # A cross-entropy per frame against targets placed by the ink of the clean training
    # plates (align.py), weighing align_weight, for the first align_steps steps (0: none):
    # no all-blank plateau (docs/experiments.md, "Time to accuracy").
    align_steps: int = 0
    align_weight: float = 10.0
    # Training plates of the records that weigh more in the loss (the smallest, tightest).
    tight_plates: input_pipeline.TightPlates = input_pipeline.TightPlates()
    # Write the exports of the best weights at the end (SavedModel, .keras, weights); off: the
    # run's metrics, checkpoints and best weights only (a sweep that keeps none of its models).
    export: bool = True


class TrainingError(Exception):
    """Training cannot go on: a one-line reason."""


def steps_per_epoch(config: TrainConfig, info: dict) -> int:
    """Training steps between validations: the configured number, or one pass of the records."""
    num_train = info["splits"]["train"]["num_examples"]
    return config.steps_per_epoch or max(num_train // config.batch_size, 1)


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from 0 to `rate` over warmup_steps, then a cosine from `rate` down to
    alpha * rate (alpha 1: constant) over decay_steps, or else until `planned_steps`.

    planned_steps (an int64 variable) is where the run will end: its steps, or fewer when the
    time budget (max_minutes) will stop it first, as it does on a machine slower than the
    config was made for; the loop sets it after each epoch (train.epochs_in_budget), so
    that the rate still comes down by the last step.
    """

    def __init__(self, rate: float, warmup_steps: int, alpha: float, decay_steps: int,
                 planned_steps: tf.Variable):
        self.rate, self.warmup_steps, self.alpha = rate, warmup_steps, alpha
        self.decay_steps, self.planned_steps = decay_steps, planned_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        decay = (tf.constant(float(self.decay_steps)) if self.decay_steps else
                 tf.maximum(tf.cast(self.planned_steps, tf.float32) - warmup, 1.0))
        progress = tf.clip_by_value((step - warmup) / decay, 0.0, 1.0)
        rate = self.rate * (self.alpha + (1.0 - self.alpha) * 0.5
                            * (1.0 + tf.cos(math.pi * progress)))
        if not self.warmup_steps:
            return rate
        return tf.where(step < warmup, self.rate * step / warmup, rate)

    def get_config(self) -> dict:
        return {"rate": self.rate, "warmup_steps": self.warmup_steps, "alpha": self.alpha,
                "decay_steps": self.decay_steps, "planned_steps": int(self.planned_steps)}


def make_optimizer(config: TrainConfig, planned_steps: int | tf.Variable
                   ) -> keras.optimizers.Optimizer:
    """Adam with the configured warm-up and decay, the decay ending at planned_steps (the
    run's steps) unless config.decay_steps says where."""
    rate = config.learning_rate
    if config.lr_schedule == "cosine" or config.warmup_steps:
        if not isinstance(planned_steps, tf.Variable):
            planned_steps = tf.Variable(planned_steps, dtype=tf.int64, trainable=False)
        rate = WarmupCosine(config.learning_rate, config.warmup_steps,
                            config.min_lr_ratio if config.lr_schedule == "cosine" else 1.0,
                            config.decay_steps, planned_steps)
    return keras.optimizers.Adam(rate, global_clipnorm=config.clip_norm or None)


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
                 total_steps: int, files: dict[str, list[str]], lost: dict[str, int],
                 mix: tuple[tuple[list[str], float], ...] = (),
                 counts: dict[str, int] | None = None):
        """files: the shards to read per split; lost: records of the shards left out; mix: the
        training shards of config.mix_records and their fractions; counts: the records of
        splits in `files` that are not the run's own (the mixed sources' validation splits)."""
        self.config, self.info, self.strategy = config, info, strategy
        self.files, self.lost, self.mix = files, lost, mix
        self.counts = {split: info["splits"][split]["num_examples"] for split in info["splits"]}
        self.counts.update(counts or {})
        if mix and (config.source != "records" or config.data_service):
            raise TrainingError("--mix_records mixes training records read in this process: "
                                "not with --source=render or --data_service")
        self.atlas = (render_source.atlas_path(info, config.records_dir)
                      if config.source == "render" else "")
        if self.atlas and config.tight_plates.weight != 1:
            raise TrainingError("--tight_weight reads the font size and spacing of the "
                                "records' plates: rendered plates (--source=render) have none")
        # The effects and ranges the records were augmented with (make_records' flags);
        # imported records (bin/import_images) have none: they were never rendered.
        style = writer.style_from_info(info) if "plate_style" in info else None
        if config.render_augment and style is None:
            raise TrainingError("--render_augment draws the effects that bin/make_records "
                                f"recorded: the records in {config.records_dir} have none")
        self.render_augment = style.augment if config.render_augment else None
        # Rendered plates come with their ink (augmented or not); records only with the
        # plates themselves, which must then be clean.
        if config.align_steps and config.source == "records" and (
                style is None or "train" in style.augmented_splits):
            raise TrainingError("--align_steps places the frames by the dark ink of clean "
                                "plates: the training records are "
                                + ("augmented" if style else "imported images (pass "
                                   "--align_steps=0)"))
        self.shape = (info["image_height"], info["image_width"])
        # What validation reads: any characters, as many as a plate of the records may have.
        self.length_masks = plate_format.any_length(records.plate_lengths(info),
                                                    len(info["alphabet"]))
        if config.coarse_ctc_pool:
            # Five equal digits need 9 steps: one blank between each repeat.
            needed = 2 * info["plate_length"] - 1
            coarse_steps = (model_lib.time_steps(self.shape[1], config.model)
                            // config.coarse_ctc_pool)
            if coarse_steps < needed:
                raise TrainingError(
                    f"--coarse_ctc_pool={config.coarse_ctc_pool} leaves {coarse_steps} time "
                    f"steps, fewer than the {needed} a plate of {info['plate_length']} "
                    "repeated characters needs")
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
            # Where the learning rate's decay ends: the run's steps, until the time
            # budget says fewer (plan_epochs).
            self.planned_steps = tf.Variable(total_steps, dtype=tf.int64, trainable=False)
            self.optimizer = make_optimizer(config, self.planned_steps)
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
        # TensorFlow's CTCLoss kernel where the replicas are CPUs (5x faster there than the
        # dense implementation); the dense one under XLA, on GPUs and on TPUs.
        self.ctc_kernel = not config.jit_compile and distribute.replicas_on_cpu(strategy)
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
        # it was slower (docs/experiments.md, "Time to accuracy").
        self.gradient_step = tf.function(self._gradient_step, jit_compile=True) \
            if config.jit_compile else self._gradient_step
        # Outside the strategy's scope: the guard's stamp is a plain variable of this process.
        self.stall_guard = (data_service.StallGuard(config.data_timeout)
                            if config.data_timeout else None)
        self.train_loop = tf.function(self._train_loop)
        self.eval_step = tf.function(self._eval_step, autograph=False)  # as export.serving_function

    def _gradient_step(self, images, labels, weights, ink):
        with tf.GradientTape() as tape:
            logits = self.model(tf.cast(images, tf.float32), training=True)
            per_example = ctc.per_example_loss(labels, logits, self.ctc_kernel)
            loss = tf.nn.compute_average_loss(
                (per_example + self.coarse_loss(labels, logits)
                 + self.align_loss(ink, labels, logits)) * weights,
                global_batch_size=self.config.batch_size)
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

    def coarse_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Per plate: the CTC loss of the logits averaged over coarse_ctc_pool time steps
        during the first coarse_ctc_steps steps, then 0 (not computed)."""
        pool = self.config.coarse_ctc_pool

        def coarse():
            return ctc.per_example_loss(labels, tf.nn.avg_pool1d(logits, pool, pool, "VALID"),
                                        self.ctc_kernel)

        return self._first_steps_only(coarse, self.config.coarse_ctc_steps if pool else 0,
                                      logits)

    def align_loss(self, ink: tf.Tensor, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Per plate: align_weight times the framewise loss against the frame targets of the
        plates' ink (clean plates, dark on light) during the first align_steps steps, then 0
        (not computed)."""
        def frames():
            return self.config.align_weight * align.frame_loss(ink, labels, logits)

        return self._first_steps_only(frames, self.config.align_steps, logits)

    def _first_steps_only(self, loss, steps: int, logits: tf.Tensor) -> tf.Tensor:
        """loss() (float32 [B]) while the optimizer has taken fewer than `steps` steps, then
        zeros (not computed); zeros throughout, and no branch, when steps is 0."""
        def none():
            return tf.zeros_like(logits[:, 0, 0])

        if not steps:
            return none()
        return tf.cond(self.optimizer.iterations < steps, loss, none)

    def _train_replica(self, images, labels, weights, ink=None):
        # Rendered plates bring their ink; a clean record is its own.
        logits, per_example = self.gradient_step(images, labels, weights,
                                                 images if ink is None else ink)
        # The weights are the loss's: every training plate counts once in the metrics. Read
        # greedily: a running figure, 4 ms a step cheaper than the fixed-length search that
        # evaluation and the exports use.
        sums = ctc.metric_sums(labels, ctc.greedy_decode(logits)[0], tf.ones_like(weights))
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
        # Read as the exports read by default: as many characters as a plate may have.
        decoded = ctc.format_decode(logits, self.length_masks)[0]
        sums = ctc.metric_sums(labels, decoded, weights)
        sums["loss"] = tf.reduce_sum(ctc.per_example_loss(labels, logits, self.ctc_kernel)
                                     * weights)
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
                    self.config.shuffle_buffer, self.render_augment,
                    self.config.render_clean_fraction, self.info["alphabet"])
            if service:
                return input_pipeline.make_service_dataset(
                    files, per_replica, *self.shape, self.info["plate_length"], service,
                    input_context=context, shuffle_buffer=self.config.shuffle_buffer, seed=seed,
                    tight=self.config.tight_plates)
            return input_pipeline.make_dataset(
                files, per_replica, training, *self.shape, self.info["plate_length"],
                input_context=context, shuffle_buffer=self.config.shuffle_buffer, seed=seed,
                tight=self.config.tight_plates, mix=self.mix)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def start_from(self, checkpoint: str, num_classes: int) -> None:
        """Loads another run's best weights (and BatchNorm statistics); the average, if any,
        starts from them too.

        num_classes: that run's (its alphabet + the blank). Another number than this run's
        loads every layer but the output layer, which keeps its fresh initial weights.
        """
        same = num_classes == len(self.info["alphabet"]) + 1
        source = self.model if same else model_lib.build_crnn(self.config.model, *self.shape,
                                                              num_classes)
        tf.train.Checkpoint(model=source).read(checkpoint).assert_existing_objects_matched()
        if not same:  # the same layers in the same order (unnamed ones hold no weights)
            for mine, theirs in zip(self.model.layers, source.layers):
                if mine.name != model_lib.OUTPUT_LAYER:
                    for variable, value in zip(mine.weights, theirs.weights):
                        if not _is_rng_state(variable):
                            variable.assign(value)
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

    def plan_epochs(self, epochs: int, epoch_steps: int) -> int:
        """Ends the learning rate's decay after `epochs` epochs of epoch_steps, as the chief
        plans them: every worker plans from its own history and clock, and only the chief's
        history is the run's (another worker's is in a scratch dir, empty again after a
        resume); workers that differed would apply different rates and stop after different
        epochs. Returns the chief's epochs (replica 0 is the chief's)."""
        local = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(epochs if context.replica_id_in_sync_group == 0 else 0,
                                        tf.int64))
        agreed = int(self.strategy.reduce(SUM, local, axis=None))
        self.planned_steps.assign(agreed * epoch_steps)
        return agreed

    def evaluate(self, split: str) -> dict:
        """Loss and metrics of the current weights over every example of a split."""
        totals = {}
        try:
            for batch in self.dataset(split, training=False):
                for key, value in self.eval_step(batch).items():
                    totals[key] = totals.get(key, 0.0) + float(value)
        except tf.errors.DataLossError as error:
            raise corrupt_records_error(error, self.files[split]) from None
        expected = self.counts[split] - self.lost[split]
        if round(totals.get("plates", 0)) != expected:
            raise TrainingError(f"evaluation of {split!r} saw {totals.get('plates', 0):.0f} "
                                f"plates, the metadata says {expected}")
        return dict(ctc.rates(totals), loss=totals["loss"] / totals["plates"], plates=expected)
