"""train_and_evaluate end to end on tiny records, in this process (one device)."""

import dataclasses
import glob
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_COUNTS
from plate_ocr.data import records, render, writer
from plate_ocr.serving import evaluate, export
from plate_ocr.training import align, ctc, input_pipeline, model, train, trainer

STRATEGY = tf.distribute.OneDeviceStrategy("/cpu:0")


def smoke_config(records_dir: str, **overrides) -> trainer.TrainConfig:
    """A tiny model and a few steps: seconds per run. No exports unless a test asks for them
    (export=True): writing them took 2.5-3.6 s of such a run."""
    config = trainer.TrainConfig(
        records_dir=records_dir,
        model=model.ModelConfig(conv_filters=(8, 16, 16, 16), dense_units=16, rnn_units=8),
        batch_size=32, eval_batch_size=32, epochs=2, steps_per_epoch=3, steps_per_loop=2,
        shuffle_buffer=200, num_image_summaries=4, export=False)
    return dataclasses.replace(config, **overrides)


def test_train_and_evaluate_writes_checkpoints_logs_and_exports(tiny_records, tmp_path,
                                                                monkeypatch):
    import threading
    import weakref
    model_dir = str(tmp_path / "run")
    # Each epoch's training iterator is destroyed on the thread that releases it aside, not
    # where the loop waits: nothing else holds it.
    destroyed_on, release = [], train._release_aside

    def watched_release(box):
        weakref.finalize(box[0], lambda: destroyed_on.append(threading.current_thread().name))
        return release(box)
    monkeypatch.setattr(train, "_release_aside", watched_release)
    result = train.train_and_evaluate(smoke_config(tiny_records, export=True), model_dir,
                                      STRATEGY)
    assert destroyed_on == ["release-iterator"] * 2
    assert result["epochs"] == 2 and result["steps"] == 6
    for split in ("val", "test"):
        assert set(result[split]) == {"plate_accuracy", "char_accuracy", "cer", "loss", "plates"}
        assert result[split]["plates"] == TINY_COUNTS[split]
    history = json.load(open(os.path.join(model_dir, train.HISTORY_FILE)))
    assert [h["step"] for h in history] == [3, 6]
    assert glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-6.index"))
    for logs in ("train", "val"):
        assert glob.glob(os.path.join(model_dir, logs, "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(model_dir, train.BEST_WEIGHTS + ".index"))
    # The time-to-accuracy curve: a scalar whose step is seconds of training, and a PNG.
    curve = [(event.step, tf.make_ndarray(value.tensor)) for path in
             glob.glob(os.path.join(model_dir, "val", "events.out.tfevents.*"))
             for event in tf.compat.v1.train.summary_iterator(path)
             for value in event.summary.value if value.tag == "plate_accuracy_by_train_seconds"]
    assert [step for step, _ in curve] == [round(h["train_seconds"]) for h in history]
    assert [float(accuracy) for _, accuracy in curve] == pytest.approx(
        [h["val"]["plate_accuracy"] for h in history])
    with open(os.path.join(model_dir, train.CURVE_FILE), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(result["time_to_accuracy"]) == {"0.99", "0.995", "0.999"}
    for path in result["exports"].values():
        assert os.path.exists(path)

    # The SavedModel takes uint8 plates and returns strings and a confidence per plate.
    serve = export.load_serving(result["exports"]["saved_model"])
    images = np.full((3, 64, 128), 255, np.uint8)
    outputs = serve(images=tf.constant(images))
    assert outputs["text"].shape == (3,) and outputs["text"].dtype == tf.string
    assert outputs["confidence"].shape == (3,)
    assert np.all((outputs["confidence"].numpy() >= 0) & (outputs["confidence"].numpy() <= 1))


@pytest.mark.parametrize("mixed_precision, jit_compile",
                         [("", False), ("bfloat16", False), ("", True)],
                         ids=["float32", "bfloat16", "jit"])
@pytest.mark.slow
def test_loss_falls(tiny_records, tmp_path, mixed_precision, jit_compile):
    config = smoke_config(tiny_records, epochs=4, steps_per_epoch=10, steps_per_loop=5,
                          learning_rate=3e-3, mixed_precision=mixed_precision,
                          jit_compile=jit_compile, export=True)
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    # Whatever the compute dtype, the exported model is float32 and gives float32 logits.
    serve = export.load_serving(result["exports"]["saved_model"])
    assert serve(images=tf.zeros((1, 64, 128), tf.uint8))["confidence"].dtype == tf.float32
    history = json.load(open(tmp_path / "run" / train.HISTORY_FILE))
    losses = [h["train"]["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_fast_config_model_has_64_time_steps_and_learns(tiny_records, tmp_path, monkeypatch):
    from plate_ocr.cli import train as cli_train
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = cli_train.config_from("configs/fast.cfg", f"--records_dir={tiny_records}")
    crnn = model.build_crnn(config.model, 64, 128, 11)
    assert tuple(crnn(np.zeros((2, 64, 128), np.float32)).shape) == (2, 64, 11)
    # Its recipe as it is but for the length: a short warm-up, a few steps.
    config = dataclasses.replace(config, epochs=3, steps_per_epoch=8, steps_per_loop=4,
                                 warmup_steps=4, eval_batch_size=64, shuffle_buffer=200,
                                 export=False)
    train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    history = json.load(open(tmp_path / "run" / train.HISTORY_FILE))
    losses = [h["train"]["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses


def rates(config: trainer.TrainConfig, total_steps: int, steps) -> list[float]:
    """The learning rate make_optimizer's optimizer applies at each of these steps."""
    optimizer = trainer.make_optimizer(config, total_steps)
    read = []
    for step in steps:
        optimizer.iterations.assign(step)
        read.append(float(optimizer.learning_rate))
    return read


def test_learning_rate_schedules_give_the_rate_planned_at_each_step():
    base = trainer.TrainConfig(records_dir="", learning_rate=1e-3)
    np.testing.assert_allclose(rates(base, 1000, [0, 500, 10**6]), [1e-3] * 3)
    # Warm-up: linear from 0 to the rate over its steps, then the rate (constant schedule).
    warm = dataclasses.replace(base, warmup_steps=100)
    np.testing.assert_allclose(rates(warm, 1000, [0, 50, 100, 5000]), [0, 5e-4, 1e-3, 1e-3],
                               rtol=1e-5, atol=1e-9)
    # Cosine after the warm-up, over the rest of the run, down to min_lr_ratio of the rate.
    cosine = dataclasses.replace(warm, lr_schedule="cosine", min_lr_ratio=0.1)
    np.testing.assert_allclose(rates(cosine, 1100, [100, 600, 1100, 5000]),
                               [1e-3, 0.55e-3, 1e-4, 1e-4], rtol=1e-5)
    # decay_steps: the cosine reaches its floor after that many steps, whatever the run's length.
    np.testing.assert_allclose(rates(dataclasses.replace(cosine, decay_steps=500), 10**6,
                                     [350, 600, 9000]), [0.55e-3, 1e-4, 1e-4], rtol=1e-5)
    no_warmup = dataclasses.replace(base, lr_schedule="cosine")  # to 0 by default
    np.testing.assert_allclose(rates(no_warmup, 1000, [0, 500, 1000]), [1e-3, 0.5e-3, 0],
                               rtol=1e-5, atol=1e-9)


def test_gradient_clipping_reaches_the_optimizer():
    base = trainer.TrainConfig(records_dir="")
    assert trainer.make_optimizer(base, 10).global_clipnorm is None
    clipped = trainer.make_optimizer(dataclasses.replace(base, clip_norm=2.5), 10)
    assert clipped.global_clipnorm == 2.5
    # Adam's step hardly depends on the gradient's scale, its second moment does: after one
    # step it holds (1 - beta_2) times the square of the gradient as clipped.
    weight = tf.Variable([0.0, 0.0])
    clipped.apply_gradients([(tf.constant([300.0, 400.0]), weight)])  # norm 500 -> 2.5
    velocity = clipped.variables[-1].numpy()  # Adam's v after one step: (1 - beta_2) g^2
    np.testing.assert_allclose(velocity, (1 - clipped.beta_2) * np.array([1.5, 2.0]) ** 2,
                               rtol=1e-4)


def test_training_budget_stops_before_an_epoch_that_would_overrun_it():
    history = [{"train_seconds": 50.0}, {"train_seconds": 80.0}]  # epochs of 50 s, then 30 s
    assert train.epochs_in_budget(history, 80.0, 1.8, 10, 2) == 2  # 80 + 30 > 108
    assert train.epochs_in_budget(history, 80.0, 2.0, 10, 2) == 3  # 80 + 30 <= 120 < 80 + 60
    assert train.epochs_in_budget(history, 80.0, 60, 10, 2) == 10  # the epochs, no more
    assert train.epochs_in_budget(history[:1], 50.0, 1.5, 10, 1) == 1  # 50 + 50 > 90
    assert train.epochs_in_budget(history, 80.0, 0.0, 10, 2) == 10  # no budget
    assert train.epochs_in_budget([], 0.0, 0.001, 10, 0) == 10      # the first epoch always runs
    assert train.epochs_in_budget(history, 200.0, 1.0, 10, 2) == 2  # past it: no epoch undone
    # Epochs of 50, 30 and 45 s: another is planned as 37.5 s, the mean after the first, so
    # 125 + 2 x 37.5 <= 210 (by the last epoch's 45 s alone, only one more would fit).
    longer = history + [{"train_seconds": 125.0}]
    assert train.epochs_in_budget(longer, 125.0, 3.5, 10, 3) == 5


def test_the_cosine_ends_where_the_run_is_planned_to_end():
    config = trainer.TrainConfig(records_dir="", learning_rate=1e-3, warmup_steps=100,
                                 lr_schedule="cosine")
    planned = tf.Variable(1100, dtype=tf.int64)
    optimizer = trainer.make_optimizer(config, planned)

    def rate(step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)
    assert rate(600) == pytest.approx(0.5e-3)
    planned.assign(600)  # the time budget will end the run at step 600: down by then
    assert [rate(350), rate(600), rate(50)] == pytest.approx([0.5e-3, 0, 0.5e-3], abs=1e-9)


class FakeClock:
    """time for plate_ocr.training.train, whose perf_counter is called at each training epoch's
    start and end: the epochs last `seconds` (the last repeated), whatever the machine."""

    def __init__(self, seconds=(50.0,)):
        self.now, self.calls, self.seconds = 0.0, 0, seconds

    def perf_counter(self) -> float:
        epoch, end = divmod(self.calls, 2)
        self.calls += 1
        self.now += self.seconds[min(epoch, len(self.seconds) - 1)] if end else 50.0
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


# The budget's two cases that stop the run early are real training runs too: slow.
@pytest.mark.parametrize("max_minutes, epochs", [
    (0, 4), pytest.param(2, 2, marks=pytest.mark.slow),
    pytest.param(2.6, 3, marks=pytest.mark.slow)])
def test_the_training_budget_stops_the_run_by_the_training_clock(tiny_records, tmp_path,
                                                                  monkeypatch, max_minutes,
                                                                  epochs):
    # 2 minutes: after 2 epochs (100 s) a third would end at 150 s, past 120: no third.
    monkeypatch.setattr(train, "time", FakeClock())
    result = train.train_and_evaluate(
        smoke_config(tiny_records, epochs=4, steps_per_epoch=1, steps_per_loop=1,
                     max_minutes=max_minutes, lr_schedule="cosine", learning_rate=1e-3),
        str(tmp_path / "run"), STRATEGY)
    assert result["epochs"] == epochs
    assert result["train_seconds"] == pytest.approx(50.0 * epochs)
    # The cosine came down by the last step the budget left, not the 4th (where it would be
    # at half the rate after 2 steps, 15% after 3).
    rates = [float(tf.make_ndarray(value.tensor)) for path in
             sorted(glob.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*")))
             for event in tf.compat.v1.train.summary_iterator(path)
             for value in event.summary.value if value.tag == "learning_rate"]
    assert len(rates) == epochs and rates[-1] == pytest.approx(0, abs=1e-9), rates


@pytest.mark.slow
def test_a_run_whose_rate_is_down_ends_though_the_budget_has_room(tiny_records, tmp_path,
                                                                  monkeypatch):
    # A first epoch of 50 s plans 2 epochs in 2 minutes; the second lasts 20 s, after which two
    # more of 20 s would fit, but the cosine has come down: the run ends, its rate at 0.
    monkeypatch.setattr(train, "time", FakeClock((50.0, 20.0)))
    result = train.train_and_evaluate(
        smoke_config(tiny_records, epochs=4, steps_per_epoch=1, steps_per_loop=1,
                     max_minutes=2, lr_schedule="cosine", learning_rate=1e-3),
        str(tmp_path / "run"), STRATEGY)
    assert result["epochs"] == 2 and result["train_seconds"] == pytest.approx(70.0)


def test_time_to_accuracy_names_the_first_validation_at_each_target():
    history = [{"epoch": epoch, "train_seconds": 30.0 * epoch, "examples": 1000 * epoch,
                "val": {"plate_accuracy": accuracy}}
               for epoch, accuracy in enumerate([0.5, 0.992, 0.991, 0.996, 0.998], start=1)]
    reached = train.time_to_accuracy(history)
    assert reached[0.99] == {"minutes": 1.0, "examples": 2000, "epoch": 2,
                             "plate_accuracy": 0.992}
    assert reached[0.995]["epoch"] == 4 and reached[0.999] is None
    assert train.format_time_to_accuracy(reached) == (
        "99%: 1.00 min (2,000 ex)  99.5%: 2.00 min (4,000 ex)  99.9%: not reached")


def test_time_to_accuracy_of_a_watched_split_reads_its_own_figures():
    history = [{"epoch": epoch, "train_seconds": 60.0 * epoch, "examples": 1000 * epoch,
                "val": {"plate_accuracy": 0.999}, "watch": {"foreign": {"plate_accuracy": a}}}
               for epoch, a in enumerate([0.9, 0.975, 0.991], start=1)]
    reached = train.time_to_accuracy(history, (0.97, 0.99, 0.999), split="foreign")
    assert reached[0.97]["epoch"] == 2 and reached[0.99]["minutes"] == 3.0
    assert reached[0.999] is None
    assert train.time_to_accuracy(history, (0.999,))[0.999]["epoch"] == 1


@pytest.mark.slow
def test_wide_training_with_frame_targets_watches_other_splits(tiny_records, tmp_path):
    # Rendered, augmented plates (a quarter clean), frame targets from their ink, and the
    # clean and augmented test splits watched each epoch; the kept weights follow val_aug.
    config = smoke_config(tiny_records, source="render", render_augment=True,
                          render_clean_fraction=0.25, align_steps=4, val_split="val_aug",
                          watch_splits=("val", "test_aug", "nonexistent"),
                          model=model.ModelConfig(conv_filters=(8, 16, 16, 16), dense_units=16,
                                                  rnn_units=8, input_norm="standardize"))
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    history = json.load(open(tmp_path / "run" / train.HISTORY_FILE))
    assert [sorted(h["watch"]) for h in history] == [["test_aug", "val"]] * 2
    assert history[-1]["watch"]["val"]["plates"] == TINY_COUNTS["val"]
    assert set(result["time_to_accuracy_test_aug"]) == {"0.99", "0.995", "0.999"}
    assert np.isfinite(result["val"]["loss"]) and result["val"]["plates"] == TINY_COUNTS["val_aug"]


@pytest.mark.slow
def test_a_short_run_on_the_wide_distribution_lowers_the_loss_on_foreign_plates(
        tiny_records, font_dir, tmp_path):
    import shutil
    from plate_ocr.data import foreign
    records_dir = str(tmp_path / "records")
    shutil.copytree(tiny_records, records_dir)
    info = records.read_info(records_dir)
    faces, _ = foreign.usable_faces(font_dir, info["alphabet"])
    test = next(evaluate.read_split(records_dir, "test", batch_size=40))
    foreign.add_split(records_dir, info, [int(text) for text in test["text"]], faces, 1)
    def foreign_losses(wide: bool) -> list[float]:
        # 210 steps (as 300, the frame targets for the first two thirds): here the wide
        # run's foreign loss went 14.6 -> 13.1, the clean run's ended at 16.1 (300 steps:
        # 13.7 -> 13.0 against 19.3).
        config = smoke_config(
            records_dir, source="render", render_augment=wide, render_clean_fraction=0.25,
            align_steps=140, val_split="val_aug", watch_splits=("foreign",), epochs=3,
            steps_per_epoch=70, steps_per_loop=35, learning_rate=4e-3, warmup_steps=20,
            shuffle_buffer=256, ema_momentum=0.99,
            model=model.ModelConfig(stem_filters=16, conv_filters=(32, 48, 64),
                                    pool_widths=(1, 1, 1), batch_norm_momentum=0.9,
                                    input_norm="standardize"))
        run_dir = tmp_path / ("wide" if wide else "clean")
        train.train_and_evaluate(config, str(run_dir), STRATEGY)
        history = json.load(open(run_dir / train.HISTORY_FILE))
        return [h["watch"]["foreign"]["loss"] for h in history]
    wide, clean = foreign_losses(True), foreign_losses(False)
    # The same steps on clean plates leave the foreign plates further from read.
    assert wide[-1] < wide[0] and wide[-1] < 0.9 * clean[-1], (wide, clean)


@pytest.mark.slow
def test_float16_steps_through_a_loss_scale(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    config = smoke_config(tiny_records, epochs=1, mixed_precision="float16")
    trainer_result = train.train_and_evaluate(config, model_dir, STRATEGY)
    history = json.load(open(tmp_path / "run" / train.HISTORY_FILE))
    assert np.isfinite(history[0]["train"]["loss"]) and trainer_result["steps"] == 3
    # The optimizer is Keras' LossScaleOptimizer around Adam: the checkpoint holds its dynamic
    # scale (from 2**15, halved by each step whose scaled gradients overflowed, which Adam
    # then skips) and its count of finite steps since the scale last changed. Under float32
    # or bfloat16 there is no such variable, and Adam's count would be 3 whatever happened.
    value = "/.ATTRIBUTES/VARIABLE_VALUE"
    scale = _checkpoint_value(model_dir, "optimizer/dynamic_scale" + value)
    since_change = _checkpoint_value(model_dir, "optimizer/step_counter" + value)
    adam_steps = _checkpoint_value(model_dir, "optimizer/inner_optimizer/_iterations" + value)
    halvings = np.log2(2.0 ** 15 / scale)
    assert halvings == round(halvings) and halvings >= 0, scale
    assert halvings + adam_steps == 3 and 0 <= since_change <= adam_steps
    assert adam_steps > 0  # at least one step was taken, not every one skipped


@pytest.mark.slow
def test_moving_average_is_what_is_validated_kept_and_resumed(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    config = smoke_config(tiny_records, epochs=1, ema_momentum=0.9, learning_rate=3e-3)
    train.train_and_evaluate(config, model_dir, STRATEGY)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader, best = tf.train.load_checkpoint(latest), tf.train.load_checkpoint(
        os.path.join(model_dir, train.BEST_WEIGHTS))
    value = "/.ATTRIBUTES/VARIABLE_VALUE"
    # The training checkpoint holds each weight once, under the optimizer's list; the moving
    # averages are in the same order.
    weights = reader.get_tensor("optimizer/_trainable_variables/0" + value)
    average = reader.get_tensor("averages/0" + value)
    assert weights.shape == average.shape and not np.array_equal(weights, average)
    assert np.abs(weights - average).max() < 0.1
    # One epoch, so it improved: the best weights are the average, not the weights.
    best_values = [best.get_tensor(name) for name, shape in
                   tf.train.list_variables(os.path.join(model_dir, train.BEST_WEIGHTS))
                   if tuple(shape) == weights.shape]
    assert any(np.array_equal(v, average) for v in best_values)
    assert not any(np.array_equal(v, weights) for v in best_values)

    # Resumed for a second epoch, the average goes on from the checkpointed one: it ends where
    # an uninterrupted two-epoch run's ends. Had it restarted from the weights at step 3, it
    # would be off by the product of the momenta of steps 4-6 (5/14 * 6/15 * 7/16, about 1/16)
    # times the gap between the average and the weights at step 3 (some 1e-4 for the first
    # kernel); the runs agree to a tenth of that (they are the same computation: equal here).
    resumed_config = dataclasses.replace(config, epochs=2)
    assert train.train_and_evaluate(resumed_config, model_dir, STRATEGY)["steps"] == 6
    whole_dir = str(tmp_path / "whole")
    train.train_and_evaluate(resumed_config, whole_dir, STRATEGY)

    def final(run_dir, name):
        path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        assert path.endswith("ckpt-6")
        return tf.train.load_variable(path, name + value)

    names = [name for name, _ in tf.train.list_variables(latest)
             if name.startswith("averages/") and name.endswith(value)]
    resumed = {name: final(model_dir, name[:-len(value)]) for name in names}
    whole = {name: final(whole_dir, name[:-len(value)]) for name in names}
    restart_gap = (5 / 14) * (6 / 15) * (7 / 16) * np.abs(weights - average).max()
    first = "averages/0" + value
    assert len(names) > 1 and restart_gap > 0
    assert np.abs(resumed[first] - whole[first]).max() < 0.1 * restart_gap
    for name in names:  # (every average, BatchNorm's statistics' too)
        np.testing.assert_allclose(resumed[name], whole[name], rtol=0, atol=0.1 * restart_gap)
    # ... and it moved on: it is not the average of step 3.
    assert not np.array_equal(resumed[first], average)


def _checkpoint_value(model_dir: str, suffix: str) -> float:
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(path) if n.endswith(suffix)]
    return tf.train.load_variable(path, names[0])


@pytest.mark.slow
def test_resume_continues_from_the_saved_step_with_optimizer_state(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    first = train.train_and_evaluate(smoke_config(tiny_records, epochs=1), model_dir, STRATEGY)
    assert first["steps"] == 3
    # Without config.export, the run writes its best weights and no export.
    assert first["exports"] == {}
    assert os.path.exists(os.path.join(model_dir, train.BEST_WEIGHTS + ".index"))
    assert not any(os.path.exists(os.path.join(model_dir, name)) for name in (
        export.SAVED_MODEL, export.KERAS_MODEL, export.KERAS_WEIGHTS))
    assert _checkpoint_value(model_dir, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3
    second = train.train_and_evaluate(smoke_config(tiny_records, epochs=2), model_dir, STRATEGY)
    assert second["epochs"] == 2 and second["steps"] == 6
    # Adam's step count went on from 3: the optimizer state was restored, not rebuilt.
    assert _checkpoint_value(model_dir, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 6
    history = json.load(open(os.path.join(model_dir, train.HISTORY_FILE)))
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.slow
def test_init_from_starts_a_fresh_run_from_another_runs_best_weights(tiny_records, tmp_path):
    source_dir = str(tmp_path / "clean")
    source = train.train_and_evaluate(smoke_config(tiny_records, learning_rate=3e-3),
                                      source_dir, STRATEGY)
    # A learning rate of 0: the run validates the weights it started from.
    frozen = smoke_config(tiny_records, epochs=1, learning_rate=0.0)
    started = train.train_and_evaluate(dataclasses.replace(frozen, init_from=source_dir),
                                       str(tmp_path / "tuned"), STRATEGY)
    fresh = train.train_and_evaluate(frozen, str(tmp_path / "fresh"), STRATEGY)
    # (BatchNorm's statistics still move a little in the frozen steps.)
    assert (abs(started["val"]["loss"] - source["val"]["loss"])
            < 0.1 * abs(fresh["val"]["loss"] - source["val"]["loss"]))
    other_shape = smoke_config(tiny_records, model=model.ModelConfig(
        conv_filters=(8, 8, 16, 16), dense_units=16, rnn_units=8), init_from=source_dir)
    with pytest.raises(trainer.TrainingError, match="another model"):
        train.train_and_evaluate(other_shape, str(tmp_path / "other"), STRATEGY)
    with pytest.raises(trainer.TrainingError, match="no trained run"):
        train.train_and_evaluate(dataclasses.replace(frozen, init_from=str(tmp_path / "none")),
                                 str(tmp_path / "nothing"), STRATEGY)


@pytest.mark.slow
def test_init_from_another_alphabet_rebuilds_only_the_output_layer(
        tiny_records, write_records, tmp_path, capsys):
    source_dir = str(tmp_path / "digits")
    train.train_and_evaluate(smoke_config(tiny_records, epochs=1), source_dir, STRATEGY)
    letters = str(tmp_path / "letters")
    write_records(letters, counts=dict(TINY_COUNTS, train=64), style=writer.PlateStyle(
        alphabet="ABCDEFGHJK0123", plate_length=4))
    config = smoke_config(letters, epochs=1, init_from=source_dir)
    train.train_and_evaluate(config, str(tmp_path / "tuned"), STRATEGY)
    assert ("output layer (alphabet 0123456789) rebuilt for ABCDEFGHJK0123"
            in capsys.readouterr().out)
    # What the run started from, against the digits' best weights.
    info = records.read_info(letters)
    run = trainer.Trainer(config, info, STRATEGY, 10, files={}, lost={})
    fresh = [variable.numpy() for variable in run.model.get_layer("logits").weights]
    checkpoint = os.path.join(source_dir, train.BEST_WEIGHTS)
    run.start_from(checkpoint, 11)
    digits = model.build_crnn(config.model, 64, 128, 11)
    tf.train.Checkpoint(model=digits).read(checkpoint).expect_partial()
    for layer, source in zip(run.model.layers, digits.layers):
        for mine, theirs in zip(layer.weights, source.weights):
            if layer.name == "logits":
                assert mine.shape[-1] == 15 and theirs.shape[-1] == 11
            elif "seed_generator" not in mine.path:
                np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for variable, value in zip(run.model.get_layer("logits").weights, fresh):
        np.testing.assert_array_equal(variable.numpy(), value)  # as initialized
    # Mixed training plates of the same kind train (here the run's own, as another source),
    # and the source's validation split is watched each epoch.
    mixed = train.train_and_evaluate(smoke_config(tiny_records, epochs=1,
                                                  mix_records=((tiny_records, 0.3),)),
                                     str(tmp_path / "same"), STRATEGY)
    assert mixed["steps"] == 3 and np.isfinite(mixed["val"]["loss"])
    history = json.load(open(tmp_path / "same" / train.HISTORY_FILE))
    assert history[0]["watch"][f"{tiny_records}:val"]["plates"] == TINY_COUNTS["val"]
    # Plates of another alphabet cannot be mixed into a run's training plates.
    with pytest.raises(trainer.TrainingError, match="--mix_records .*alphabet is 'ABCDEFGHJK0123'"):
        train.train_and_evaluate(smoke_config(tiny_records, mix_records=((letters, 0.3),)),
                                 str(tmp_path / "mixed"), STRATEGY)


@pytest.mark.slow
def test_validation_split_is_what_is_validated_and_must_be_in_the_records(
        tiny_records, write_records, tmp_path):
    config = smoke_config(tiny_records, epochs=1, val_split="val_aug")
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    assert result["val"]["plates"] == TINY_COUNTS["val_aug"] != TINY_COUNTS["val"]
    history = json.load(open(tmp_path / "run" / train.HISTORY_FILE))
    assert [entry["val"]["plates"] for entry in history] == [TINY_COUNTS["val_aug"]]
    clean_only = str(tmp_path / "clean_only")
    write_records(clean_only, counts=dict(TINY_COUNTS, val_aug=0))
    with pytest.raises(trainer.TrainingError, match="no val_aug plates to validate on"):
        train.train_and_evaluate(dataclasses.replace(config, records_dir=clean_only),
                                 str(tmp_path / "other"), STRATEGY)


def test_coarse_ctc_loss_acts_for_its_first_steps_only(tiny_records):
    info = records.read_info(tiny_records)
    config = smoke_config(tiny_records, coarse_ctc_pool=2, coarse_ctc_steps=3)
    run = trainer.Trainer(config, info, STRATEGY, 10, files={}, lost={})
    # The smoke model's 32 time steps: pooled by 2, 16 >= the 9 of 5 repeated digits.
    logits = tf.random.stateless_normal((4, 32, 11), seed=(1, 2))
    labels = tf.random.stateless_uniform((4, 5), seed=(3, 4), maxval=10, dtype=tf.int32)
    pooled = ctc.per_example_loss(labels, tf.nn.avg_pool1d(logits, 2, 2, "VALID"))
    for step, expected in ((0, pooled), (2, pooled), (3, 0 * pooled), (9, 0 * pooled)):
        run.optimizer.iterations.assign(step)
        np.testing.assert_allclose(run.coarse_loss(labels, logits), expected, rtol=1e-4)
    assert np.all(pooled.numpy() > 1.0)
    with pytest.raises(trainer.TrainingError, match="coarse_ctc_pool=4 leaves 8 time steps"):
        trainer.Trainer(dataclasses.replace(config, coarse_ctc_pool=4), info, STRATEGY, 10,
                        files={}, lost={})


@pytest.mark.slow
def test_align_loss_acts_for_its_first_steps_and_only_on_clean_plates(tiny_records, tmp_path):
    info = records.read_info(tiny_records)
    config = smoke_config(tiny_records, align_steps=3, align_weight=10.0)
    run = trainer.Trainer(config, info, STRATEGY, 10, files={}, lost={})
    batch = next(evaluate.read_split(tiny_records, "train", batch_size=4))
    images = tf.constant(batch["image"])
    labels = tf.constant([[int(c) for c in text] for text in batch["text"]])
    logits = tf.random.stateless_normal((4, 32, 11), seed=(1, 2))
    framewise = 10.0 * align.frame_loss(images, labels, logits)
    for step, expected in ((0, framewise), (2, framewise), (3, 0 * framewise)):
        run.optimizer.iterations.assign(step)
        np.testing.assert_allclose(run.align_loss(images, labels, logits), expected, rtol=1e-5)
    assert np.all(framewise.numpy() > 1.0)
    # Through the training loop: its first 3 of 6 steps carry the framewise loss.
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    assert result["steps"] == 6 and np.isfinite(result["val"]["loss"])
    # Augmented records carry no clean ink to place the frames by (rendered plates do).
    augmented = dict(info, plate_style=dict(info["plate_style"], augmented_splits=["train"]))
    with pytest.raises(trainer.TrainingError, match="--align_steps places the frames"):
        trainer.Trainer(config, augmented, STRATEGY, 10, files={}, lost={})


def test_tight_weight_needs_the_records_plates(tiny_records):
    config = smoke_config(tiny_records, source="render",
                          tight_plates=input_pipeline.TightPlates(weight=3.0))
    with pytest.raises(trainer.TrainingError, match="--tight_weight reads the font size"):
        trainer.Trainer(config, records.read_info(tiny_records), STRATEGY, 10, files={},
                        lost={})


@pytest.mark.slow
@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_after_patience_epochs_without_improvement(tiny_records, tmp_path,
                                                                  patience):
    # A min_delta no loss can beat: only the first epoch improves (on infinity).
    config = smoke_config(tiny_records, epochs=10, steps_per_epoch=1, patience=patience,
                          min_delta=1e9)
    result = train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    assert result["epochs"] == 1 + patience


@pytest.mark.slow
def test_profiler_window_writes_a_trace(tiny_records, tmp_path):
    config = smoke_config(tiny_records, epochs=1, steps_per_epoch=5, profile_steps=(2, 4))
    train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)
    assert glob.glob(str(tmp_path / "run" / "plugins" / "profile" / "*" / "*.xplane.pb"))


@pytest.mark.slow
def test_records_of_another_image_size_are_refused(tiny_records, write_records, tmp_path):
    model_dir = str(tmp_path / "run")
    train.train_and_evaluate(smoke_config(tiny_records, epochs=1), model_dir, STRATEGY)
    other = str(tmp_path / "records48")
    write_records(other, style=writer.PlateStyle(spec=render.PlateSpec(height=48, width=128)))
    with pytest.raises(trainer.TrainingError, match="image_height"):
        train.train_and_evaluate(smoke_config(other, epochs=2), model_dir, STRATEGY)


def test_missing_records_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="bin/make_records"):
        train.train_and_evaluate(smoke_config(str(tmp_path / "nothing")), str(tmp_path / "run"),
                                 STRATEGY)


def test_non_finite_loss_stops_the_run_naming_the_step(tiny_records, tmp_path):
    config = smoke_config(tiny_records, learning_rate=1e38, steps_per_epoch=4, steps_per_loop=4)
    with pytest.raises(trainer.TrainingError, match=r"not finite at step \d+"):
        train.train_and_evaluate(config, str(tmp_path / "run"), STRATEGY)


@pytest.mark.parametrize("source", ["records", "render"])
def test_a_resumed_epoch_reads_the_batches_the_uninterrupted_run_read(tiny_records, source):
    # train_and_evaluate starts each epoch's stream afresh from (seed, epoch): a run resumed
    # at epoch 2, in a new Trainer, must see the batches an uninterrupted run saw there.
    info = records.read_info(tiny_records)
    config = smoke_config(tiny_records, source=source, shuffle_buffer=64)
    files = {"train": records.split_files(info, tiny_records, "train")}

    def images(epoch: int, batches: int = 3) -> np.ndarray:
        """The images of an epoch's first batches, read by a new Trainer."""
        run = trainer.Trainer(config, info, STRATEGY, 10, files=files, lost={"train": 0})
        iterator = iter(run.dataset("train", training=True, epoch=epoch))
        return np.stack([next(iterator)[0].numpy() for _ in range(batches)])

    uninterrupted = images(2)
    np.testing.assert_array_equal(images(2), uninterrupted)
    assert not np.array_equal(images(1), uninterrupted)  # each epoch its own stream
