"""The train command: flags -> TrainConfig -> train.train_and_evaluate under a strategy.

absl code like the rest of cli/ (helpers in common.py): flags are defined when the command starts.
"""

import os

from absl import flags

from plate_ocr.cli.common import FLAGS, CommandError, run_command


def _int_list(values: flags.FlagValues, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values[name].value)
    except ValueError:
        raise CommandError(f"--{name} must be integers separated by commas") from None


def train_config(values: flags.FlagValues = FLAGS):
    """The TrainConfig that parsed training flags describe."""
    from plate_ocr.training import input_pipeline, model, trainer
    if values.render_augment and values.source != "render":
        raise CommandError("--render_augment needs --source=render (records are augmented "
                           "when written: bin/make_records --augment_train)")
    profile = None
    if values.profile_steps:
        profile = _int_list(values, "profile_steps")
        if len(profile) != 2 or not 0 <= profile[0] < profile[1]:
            raise CommandError("--profile_steps must be START,STOP with 0 <= START < STOP")
    model_config = model.ModelConfig(
        stem_filters=values.stem_filters, conv_filters=_int_list(values, "conv_filters"),
        pool_widths=_int_list(values, "pool_widths"),
        dense_units=values.dense_units, rnn_units=values.rnn_units, rnn=values.rnn,
        rnn_stride=values.rnn_stride,
        dropout=values.dropout, batch_norm_momentum=values.batch_norm_momentum,
        input_norm=values.input_norm)
    return trainer.TrainConfig(
        records_dir=values.records_dir, model=model_config, batch_size=values.batch_size,
        eval_batch_size=values.eval_batch_size, learning_rate=values.learning_rate,
        lr_schedule=values.lr_schedule, warmup_steps=values.warmup_steps,
        decay_steps=values.decay_steps, min_lr_ratio=values.min_lr_ratio,
        clip_norm=values.clip_norm, epochs=values.epochs, steps_per_epoch=values.steps_per_epoch,
        steps_per_loop=values.steps_per_loop, patience=values.patience,
        min_delta=values.min_delta, shuffle_buffer=values.shuffle_buffer, seed=values.seed,
        max_minutes=values.max_minutes, profile_steps=profile,
        num_image_summaries=values.num_image_summaries, skip_corrupt=values.skip_corrupt,
        mixed_precision="" if values.mixed_precision == "float32" else values.mixed_precision,
        jit_compile=values.jit_compile, ema_momentum=values.ema_momentum,
        data_service=_data_service(values.data_service), data_timeout=values.data_timeout,
        source=values.source, render_augment=values.render_augment,
        render_clean_fraction=values.render_clean_fraction, init_from=values.init_from,
        mix_records=_mix_records(values.mix_records), plate_format=values.plate_format,
        val_split=values.val_split, watch_splits=tuple(values.watch_splits),
        coarse_ctc_pool=values.coarse_ctc_pool, coarse_ctc_steps=values.coarse_ctc_steps,
        align_steps=values.align_steps, align_weight=values.align_weight,
        tight_plates=input_pipeline.TightPlates(values.tight_weight, values.tight_font_size,
                                                values.tight_spacing),
        export=values.export)


def _mix_records(entries: list[str]) -> tuple[tuple[str, float], ...]:
    """--mix_records DIR:FRACTION,... -> ((dir, fraction), ...), the fractions summing under 1."""
    mix = []
    for entry in entries:
        records_dir, _, fraction = entry.rpartition(":")
        try:
            value = float(fraction)
        except ValueError:
            value = -1.0
        if not records_dir or not 0 < value < 1:
            raise CommandError(f"--mix_records {entry!r}: expected DIR:FRACTION with a fraction "
                               "between 0 and 1 (tfrecords:0.3)")
        mix.append((records_dir, value))
    if sum(value for _, value in mix) >= 1:
        raise CommandError("--mix_records: the fractions must leave some plates to --records_dir")
    return tuple(mix)


def _data_service(address: str) -> str:
    from plate_ocr.training import data_service
    try:
        return data_service.service_target(address) if address else ""
    except ValueError as error:
        raise CommandError(f"--data_service: {error}") from None


def define_train_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines the training flags, on FLAGS or on a FlagValues of one's own (see config_from).

    Returns:
      their names, in order (what the effective-flags file of a run lists).
    """
    from plate_ocr.training import distribute
    before = set(flag_values)
    on = {"flag_values": flag_values}
    flags.DEFINE_string("records_dir", "tfrecords", "Records written by bin/make_records.", **on)
    flags.DEFINE_string("model_dir", "runs/default", "Checkpoints, logs and exports; a run "
                        "restarted with the same dir resumes.", **on)
    flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES, "tf.distribute strategy.", **on)
    flags.DEFINE_integer("num_cpu_devices", 1, "Logical CPU devices (2+: Mirrored on CPU).",
                         lower_bound=1, **on)
    flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.", **on)
    flags.DEFINE_integer("batch_size", 256, "Global training batch.", lower_bound=1, **on)
    flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch.", lower_bound=1, **on)
    flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate (peak, with a schedule).",
                       lower_bound=0, **on)
    flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"], "Learning-rate decay.",
                      **on)
    flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.", lower_bound=0, **on)
    flags.DEFINE_integer("decay_steps", 0, "Cosine decay steps (0: the whole run, as far as "
                         "--max_minutes lets it go).",
                         lower_bound=0, **on)
    flags.DEFINE_float("min_lr_ratio", 0.0, "Final rate of the cosine, as a fraction.",
                       lower_bound=0, **on)
    flags.DEFINE_integer("coarse_ctc_pool", 0, "For the first --coarse_ctc_steps steps, add "
                         "a CTC loss on the logits averaged over this many time steps (0: "
                         "none): the model leaves the all-blank plateau sooner.",
                         lower_bound=0, **on)
    flags.DEFINE_integer("coarse_ctc_steps", 600, "Steps that --coarse_ctc_pool's loss lasts.",
                         lower_bound=0, **on)
    flags.DEFINE_integer("align_steps", 0, "For the first N steps, add a cross-entropy per "
                         "frame against targets placed by the ink of the clean training "
                         "plates (each digit on the frames at the centre of its fifth of the "
                         "ink's width, blank elsewhere; 0: none): no all-blank CTC plateau.",
                         lower_bound=0, **on)
    flags.DEFINE_float("align_weight", 10.0, "Weight of --align_steps' loss beside CTC's.",
                       lower_bound=0, **on)
    flags.DEFINE_float("tight_weight", 1.0, "Weight in the training loss of the records' "
                       "plates of font size <= --tight_font_size and spacing <= "
                       "--tight_spacing, whose digits span the fewest CTC frames (1: none).",
                       lower_bound=0, **on)
    flags.DEFINE_integer("tight_font_size", 19, "See --tight_weight.", **on)
    flags.DEFINE_integer("tight_spacing", 1, "See --tight_weight.", **on)
    flags.DEFINE_float("clip_norm", 0.0, "Clip gradients to this global norm (0: off).",
                       lower_bound=0, **on)
    flags.DEFINE_enum("mixed_precision", "float32", ["float32", "bfloat16", "float16"],
                      "Compute dtype of the layers (Keras mixed_* policy; variables, logits and "
                      "CTC stay float32; float16 adds loss scaling): bfloat16 on TPUs and CPUs "
                      "with AVX512-BF16/AMX, float16 on GPUs.", **on)
    flags.DEFINE_boolean("jit_compile", False, "XLA-compile the per-replica training step "
                         "(not with a cuDNN LSTM on GPU: it has no XLA kernel).", **on)
    flags.DEFINE_float("ema_momentum", 0.0, "Validate, keep and export an exponential moving "
                       "average of the weights with this momentum (0: the weights themselves).",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_boolean("export", True, "Export the best weights at the end (SavedModel, "
                         ".keras, weights); --noexport: the metrics, checkpoints and best "
                         "weights only (a sweep that keeps none of its models).", **on)
    flags.DEFINE_integer("epochs", 55, "Most epochs.", lower_bound=1, **on)
    flags.DEFINE_integer("steps_per_epoch", 0, "Steps between validations (0: one pass "
                         "over the training split).", lower_bound=0, **on)
    flags.DEFINE_integer("steps_per_loop", 50, "Steps per tf.function call.", lower_bound=1,
                         **on)
    flags.DEFINE_integer("patience", 5, "Stop after this many epochs without a better "
                         "validation loss.", lower_bound=1, **on)
    flags.DEFINE_float("min_delta", 0.0, "Smallest validation-loss drop that counts.",
                       lower_bound=0, **on)
    flags.DEFINE_integer("shuffle_buffer", 10000, "Examples in the shuffle buffer.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("seed", 0, "Seed of initialization and shuffling.", **on)
    flags.DEFINE_boolean("render_augment", False, "With --source=render: augment the "
                         "rendered plates with the effects and ranges of make_records' "
                         "--augment_* flags (as TF ops: new distortions each time round).",
                         **on)
    flags.DEFINE_float("render_clean_fraction", 0.0, "With --render_augment: the fraction of "
                       "rendered plates left clean.", lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_string("init_from", "", "A model dir whose best weights start this run "
                        "(fine-tuning); the model shape and image size must match, the alphabet may differ "
                        "(every layer but the output layer is loaded; that one is rebuilt). "
                        "Used only when --model_dir has no checkpoint yet.", **on)
    flags.DEFINE_list("mix_records", [], "DIR:FRACTION,...: other records dirs (same image "
                      "size, alphabet and plate length) whose training plates make up these "
                      "fractions of each training batch, --records_dir's the rest: fine-tune on "
                      "your plates (bin/import_images) while still seeing synthetic ones "
                      "(tfrecords:0.3).", **on)
    flags.DEFINE_string("plate_format", "", "The readings the exports may give: character "
                        "classes and counts, alternatives with | (\"[A-Z]{2}[0-9]{3}\", "
                        "\"[0-9]{5}|[A-Z][0-9]{4}\"); decoding finds the most probable one the "
                        "format accepts. Empty: exactly the records' plate length.", **on)
    flags.DEFINE_float("max_minutes", 0.0, "Training-time budget (0: none): no epoch starts "
                       "that would end past it, judged by the mean epoch after the first; where it "
                       "leaves fewer than --epochs, the warm-up and cosine end with the last "
                       "epoch it leaves.",
                       lower_bound=0, **on)
    flags.DEFINE_list("profile_steps", [], "START,STOP: profiler trace of these steps.", **on)
    flags.DEFINE_integer("num_image_summaries", 16, "Validation plates drawn per epoch.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("stem_filters", 0, "Filters of a stride-2 convolution before the "
                         "conv blocks (0: no stem).", lower_bound=0, **on)
    flags.DEFINE_list("conv_filters", ["32", "64", "128", "128"], "Filters per conv block.",
                      **on)
    flags.DEFINE_list("pool_widths", ["2", "2", "1", "1"], "Width pooling per conv block "
                      "(height always halves).", **on)
    flags.DEFINE_integer("dense_units", 128, "Units of the Dense layer before the RNN.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("rnn_units", 64, "Units per direction of the bidirectional RNN.",
                         lower_bound=1, **on)
    flags.DEFINE_enum("rnn", "lstm", ["lstm", "gru"], "Recurrent layer.", **on)
    flags.DEFINE_integer("rnn_stride", 1, "Columns each RNN step reads, and frames of logits "
                         "it writes (the RNN runs over time steps / stride; CTC keeps every "
                         "frame).", lower_bound=1, **on)
    flags.DEFINE_float("dropout", 0.2, "Dropout rate.", lower_bound=0, upper_bound=0.9, **on)
    flags.DEFINE_enum("input_norm", "scale", ["scale", "standardize"], "The model's input: "
                      "pixel values / 255, or each plate standardized (mean 0, deviation 1).",
                      **on)
    flags.DEFINE_float("batch_norm_momentum", 0.99, "Momentum of BatchNorm's moving statistics.",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_string("data_service", "", "grpc://HOST:PORT of a tf.data service dispatcher "
                        "(bin/data_service): the training input is read and parsed on its "
                        "workers, each record once per pass (distributed_epoch). Validation "
                        "and test still read the local --records_dir, every example exactly "
                        "once; the workers must read the records at the same path. Empty: "
                        "in this process.", **on)
    flags.DEFINE_enum("source", "records", ["records", "render"], "Training plates: the "
                      "training records, or rendered afresh from the glyph atlas written with "
                      "the records (the same labels; a new font, size, spacing and position "
                      "for each label each time round; TF ops, so tf.data service workers can "
                      "render them).", **on)
    flags.DEFINE_float("data_timeout", 0.0, "Stop the run (one line on stderr, exit status 1, "
                       "checkpoints kept) when no training batch arrives for this many seconds, "
                       "e.g. when a data-service worker died (0: wait forever).",
                       lower_bound=0, **on)
    flags.DEFINE_list("watch_splits", [], "Splits also evaluated each epoch and recorded (time "
                      "to accuracy on them; e.g. val,foreign); never used to choose weights.",
                      **on)
    flags.DEFINE_enum("val_split", "val", ["val", "val_aug"], "The split validated each "
                      "epoch, for early stopping and the best weights: val_aug (augmented "
                      "plates of the validation labels) for a model trained on augmented "
                      "plates.", **on)
    flags.DEFINE_boolean("skip_corrupt", False, "Leave out shards that are missing or whose "
                         "sha256 differs from dataset_info.json (and report the records lost) "
                         "instead of stopping.", **on)
    return [name for name in flag_values if name not in before]


def config_from(flagfile: str, *overrides: str):
    """The TrainConfig of a config flagfile (plus `--name=value` overrides), for other commands."""
    values = flags.FlagValues()
    define_train_flags(values)
    values(["config_from", f"--flagfile={flagfile}", *overrides])
    return train_config(values)


def _write_flagfile(path: str, names, command: str) -> None:
    """Writes the effective flags as a flagfile that re-runs the same configuration."""
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(f"# Effective flags of this run; re-run with: bin/{command} --flagfile {path}\n")
        f.write("".join(FLAGS[name].serialize() + "\n" for name in names))


def train() -> None:
    """Trains the CRNN with the custom loop under a tf.distribute strategy."""
    # Before TensorFlow loads: keep its C++ warnings and errors, drop its info chatter.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    from plate_ocr.training import distribute
    train_flags = define_train_flags()

    def main(argv):
        import tensorflow as tf
        from absl import logging
        from plate_ocr.data import records
        from plate_ocr.training import train as train_lib, trainer
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        config = train_config()
        try:
            records.read_info(config.records_dir)
            strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.num_cpu_devices, FLAGS.tpu)
            replicas = strategy.num_replicas_in_sync
            if config.batch_size % replicas or config.eval_batch_size % replicas:
                raise CommandError(f"--batch_size and --eval_batch_size must be multiples of "
                                   f"the {replicas} replicas")
            out_dir = distribute.writer_dir(FLAGS.model_dir, strategy)
            tf.io.gfile.makedirs(out_dir)
            _write_flagfile(os.path.join(out_dir, "flags.cfg"), train_flags, "train")
            print(f"training under {type(strategy).__name__} with {replicas} replica(s); "
                  f"tensorboard --logdir {FLAGS.model_dir}")
            result = train_lib.train_and_evaluate(config, FLAGS.model_dir, strategy)
        except (trainer.TrainingError, FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        except OSError as error:  # disk full or unwritable model dir; checkpoints stay whole
            raise CommandError(f"writing to {FLAGS.model_dir} failed: "
                               f"{error.strerror or error}") from None
        except tf.errors.OpError as error:
            if "No space left" not in error.message:
                raise
            raise CommandError(f"writing to {FLAGS.model_dir} failed: no space left on "
                               "device") from None
        names = {"val": FLAGS.val_split, "test": "test"}
        summary = "  ".join(f"{names[split]} plate accuracy {result[split]['plate_accuracy']:.4f} "
                            f"(CER {result[split]['cer']:.4f})"
                            for split in names if split in result)
        print(f"done: {result['epochs']} epochs, {result['steps']} steps, "
              f"{result['train_seconds'] / 60:.1f} min of training, peak memory "
              f"{result['peak_rss_mb'] / 1024:.1f} GB; {summary}"
              + (f"; exported to {result['exports']['saved_model']}" if result["exports"]
                 else ""))

    run_command(main)


COMMANDS = {"train": train}
