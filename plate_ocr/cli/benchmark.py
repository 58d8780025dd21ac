"""The benchmark command: bin/benchmark measures the pipeline's stages on this machine.

The stages (benchmark/: figures.py, input_stages.py, model_stages.py) are library code: they take
paths and TrainConfigs, which this command builds from the configs' flagfiles.
"""

import os

from absl import flags

from plate_ocr.cli.common import FLAGS, CommandError, run_command
from plate_ocr.paths import project_path


def benchmark() -> None:
    """Measures the speed and memory of the pipeline's stages on this machine."""
    # Before TensorFlow loads (here and in the stages' processes): keep its warnings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    flags.DEFINE_list("stages", ["records", "pipeline", "train", "inference"],
                      "Stages to measure, comma-separated: records, pipeline, train, inference, "
                      "time_to_accuracy.")
    flags.DEFINE_boolean("time_to_accuracy", False, "Measure only the time_to_accuracy stage: "
                         "train --tta_config from scratch and print the minutes to 99%, 99.5% "
                         "and 99.9% validation plate accuracy.")
    flags.DEFINE_string("tta_config", project_path("configs", "fast.cfg"),
                        "Training config (flagfile) of the time_to_accuracy stage.")
    flags.DEFINE_integer("num_plates", 20000, "Plates per worker in each timed records run.",
                         lower_bound=10)
    flags.DEFINE_float("dataset_scale", 1.0, "Size of the timed make_records run, as a "
                       "fraction of its default dataset (79,000 plates); 0 skips it.",
                       lower_bound=0)
    flags.DEFINE_integer("repeats", 3, "Runs per figure; the median is reported.",
                         lower_bound=1)
    flags.DEFINE_string("font_dir", project_path("fonts"), "Gathered fonts and manifest.tsv.")
    flags.DEFINE_string("work_dir", "", "Folder for the files the timed runs write "
                        "(default: the system's temporary folder).")
    flags.DEFINE_string("records_dir", project_path("tfrecords"), "Records the pipeline, "
                        "train and inference stages read (train and val splits).")
    flags.DEFINE_integer("pipeline_examples", 100000, "Examples per timed pass of the TFRecord "
                         "input pipeline.", lower_bound=1)
    flags.DEFINE_integer("png_examples", 5000, "Val plates written as PNG files; each timed "
                         "pass of the PNG pipeline reads as many, in whole batches of 256.",
                         lower_bound=1)
    flags.DEFINE_list("configs", [project_path("configs", "cpu.cfg"),
                                  project_path("configs", "default.cfg")],
                      "Training configs (flagfiles) of the train stage, comma-separated.")
    flags.DEFINE_integer("train_steps", 10, "Training steps per timed run.", lower_bound=1)
    flags.DEFINE_list("model", [project_path("runs", "fast")], "Models of the inference "
                      "stage, comma-separated, measured one after another on the same plates: "
                      "model dirs, SavedModels, .keras or .tflite files (say runs/fast,"
                      "runs/fast/model.tflite,runs/fast/model-dynamic.tflite).")
    flags.DEFINE_integer("inference_batches", 20, "Batches of 256 per timed inference run.",
                         lower_bound=1)
    flags.DEFINE_integer("latency_calls", 200, "One-plate calls per timed latency run.",
                         lower_bound=1)
    flags.DEFINE_integer("tesseract_plates", 500, "Val plates that Tesseract 5 reads in the "
                         "inference stage, beside the models (0: none; skipped with a line "
                         "when `tesseract` is not installed: apt-get install tesseract-ocr).",
                         lower_bound=0)
    flags.DEFINE_boolean("json", False, "Print one JSON object instead of the table.")

    def config_name(path: str) -> str:
        return os.path.splitext(os.path.basename(path))[0]

    def model_name(path: str) -> str:  # runs/fast -> fast, runs/fast/model.tflite -> model.tflite
        return os.path.basename(os.path.normpath(path))

    def check_paths(flag: str, exists, what: str, name) -> None:
        """Every path of a list flag exists, and their names (the stages') are distinct."""
        paths = FLAGS[flag].value
        missing = [path for path in paths if not exists(path)]
        if missing or not paths:
            raise CommandError(f"--{flag}: no such {what} " + (", ".join(missing)
                                                              or "(none given)"))
        names = [name(path) for path in paths]
        if len(set(names)) < len(names):
            raise CommandError(f"--{flag} must have distinct names, got {', '.join(names)}")

    def check_inputs() -> None:
        """Fails before minutes of measuring when an input of a chosen stage is missing."""
        from plate_ocr.data import records
        if {"pipeline", "train", "inference", "time_to_accuracy"} & set(FLAGS.stages):
            records.read_info(FLAGS.records_dir)
        if "train" in FLAGS.stages:
            check_paths("configs", os.path.isfile, "file", config_name)
        if "time_to_accuracy" in FLAGS.stages and not os.path.isfile(FLAGS.tta_config):
            raise CommandError(f"--tta_config: no such file {FLAGS.tta_config}")
        if "inference" in FLAGS.stages:
            check_paths("model", os.path.exists, "file or folder", model_name)

    def main(argv):
        import json
        import tempfile
        from plate_ocr.benchmark import figures as benchmark_lib, input_stages, model_stages
        from plate_ocr.cli.train import config_from
        from plate_ocr.data import fonts
        if FLAGS.time_to_accuracy:
            FLAGS.stages = ["time_to_accuracy"]
        unknown = sorted(set(FLAGS.stages) - set(benchmark_lib.STAGES))
        if unknown or not FLAGS.stages:
            raise CommandError(f"--stages must name some of {','.join(benchmark_lib.STAGES)}"
                               f" (unknown: {','.join(unknown) or 'none given'})")
        try:
            check_inputs()
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        # Other processes on the machine skew every figure: the load average tells.
        settings = {"cpus": os.cpu_count(), "repeats": FLAGS.repeats,
                    "load_average_at_start": round(os.getloadavg()[0], 2)}
        results = {}
        if FLAGS.work_dir:
            os.makedirs(FLAGS.work_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="plate_ocr_benchmark_",
                                         dir=FLAGS.work_dir or None) as work_dir:
            try:
                if "records" in FLAGS.stages:
                    settings["records"] = {
                        "plates_per_worker": FLAGS.num_plates,
                        "short_run_plates": max(1, FLAGS.num_plates // 10),
                        "dataset_scale": FLAGS.dataset_scale, "work_dir": work_dir}
                    results["records"] = benchmark_lib.records_stage(
                        FLAGS.font_dir, FLAGS.num_plates, FLAGS.repeats, FLAGS.dataset_scale,
                        work_dir)
                if "pipeline" in FLAGS.stages:
                    results["pipeline"], notes = input_stages.pipeline_stage(
                        FLAGS.records_dir, FLAGS.pipeline_examples, FLAGS.png_examples,
                        FLAGS.repeats, work_dir)
                    settings["pipeline"] = {
                        "records_dir": FLAGS.records_dir, "batch": benchmark_lib.BATCH,
                        "examples_per_pass": FLAGS.pipeline_examples,
                        "png_files": FLAGS.png_examples, **notes}
                for path in FLAGS.configs if "train" in FLAGS.stages else ():
                    stage = f"train {config_name(path)}"
                    results[stage], notes = model_stages.train_stage(
                        config_from(path, f"--records_dir={FLAGS.records_dir}"),
                        FLAGS.train_steps, FLAGS.repeats,
                        results.get("pipeline", {}).get("tfrecord_examples_per_s"))
                    settings[stage] = {"config": path, "steps_per_run": FLAGS.train_steps,
                                       **notes}
                for path in FLAGS.model if "inference" in FLAGS.stages else ():
                    stage = f"inference {model_name(path)}"
                    results[stage], notes = model_stages.inference_stage(
                        path, FLAGS.records_dir, FLAGS.inference_batches,
                        FLAGS.latency_calls, FLAGS.repeats)
                    settings[stage] = {
                        "model": path, "batch": benchmark_lib.BATCH,
                        "batches_per_run": FLAGS.inference_batches,
                        "latency_calls_per_run": FLAGS.latency_calls, **notes}
                if "inference" in FLAGS.stages and FLAGS.tesseract_plates:
                    figures = model_stages.tesseract_stage(
                        FLAGS.records_dir, FLAGS.tesseract_plates, FLAGS.repeats, work_dir)
                    if figures:
                        results["tesseract"] = figures
                    settings["tesseract"] = {
                        "plates": FLAGS.tesseract_plates, "installed": figures is not None,
                        "command": " ".join(model_stages.TESSERACT)}
                if "time_to_accuracy" in FLAGS.stages:
                    curve = os.path.join(os.path.abspath(FLAGS.work_dir or "."),
                                         f"time_to_accuracy-{config_name(FLAGS.tta_config)}.png")
                    results["time_to_accuracy"], notes = model_stages.time_to_accuracy_stage(
                        config_from(FLAGS.tta_config, f"--records_dir={FLAGS.records_dir}"),
                        os.path.join(work_dir, "time_to_accuracy"), curve)
                    settings["time_to_accuracy"] = {"config": FLAGS.tta_config, "curve": curve,
                                                    **notes}
            except (ValueError, FileNotFoundError, fonts.FontError) as error:
                raise CommandError(str(error).splitlines()[0]) from None
        settings["load_average_at_end"] = round(os.getloadavg()[0], 2)
        if FLAGS.json:
            print(json.dumps({"settings": settings, **results}, indent=1))
            return
        print(f"{settings['cpus']} CPUs, load average {settings['load_average_at_start']:.2f} "
              f"at start and {settings['load_average_at_end']:.2f} at end; each figure the "
              f"median of {FLAGS.repeats} runs after a warm-up")
        if "records" in results:
            print(f"records: {FLAGS.num_plates:,} plates per worker per timed run, short run "
                  f"{settings['records']['short_run_plates']:,}" + (
                      f"; make_records run of {results['records']['dataset_plates']:,.0f} "
                      "plates" if "dataset_plates" in results["records"] else ""))
        if "pipeline" in results:
            print(f"pipeline: {FLAGS.records_dir}, batch {benchmark_lib.BATCH}, "
                  f"{FLAGS.pipeline_examples:,} TFRecord examples and {FLAGS.png_examples:,} "
                  "PNG files per run, both from the page cache, both ending in float32 /255")
        for path in FLAGS.configs if "train" in FLAGS.stages else ():
            stage = f"train {config_name(path)}"
            jit = settings[stage]["fit_jit_compile"]
            print(f"{stage}: {path}, {FLAGS.train_steps} steps per run, OneDeviceStrategy; "
                  f"model.fit with Keras' defaults (jit_compile {'on' if jit else 'off'}, "
                  "steps_per_execution 1)")
        if "time_to_accuracy" in results:
            print(f"time_to_accuracy: {FLAGS.tta_config} from scratch on {FLAGS.records_dir} "
                  "under the default strategy; minutes are training time (evaluation excluded); "
                  f"curve: {settings['time_to_accuracy']['curve']}")
        if "inference" in FLAGS.stages:
            print(f"inference: {', '.join(FLAGS.model)}, each in its own processes through "
                  f"evaluate.load_predictor, the same val plates; {FLAGS.inference_batches} "
                  f"batches on all cores (and as many foreign plates), then "
                  f"{FLAGS.latency_calls} one-plate calls on one thread, then on two, per run")
        if "tesseract" in settings:
            print(f"tesseract: {FLAGS.tesseract_plates} of the same val plates, upscaled 2x, "
                  f"OMP_THREAD_LIMIT=1 {settings['tesseract']['command']} <list>"
                  if settings["tesseract"]["installed"] else
                  "tesseract: not installed (apt-get install tesseract-ocr), skipped")
        baselines = [notes["rss_mb_after_import"] for notes in settings.values()
                     if isinstance(notes, dict) and "rss_mb_after_import" in notes]
        if baselines:
            print("peak RSS: of a process that ran that one measurement alone, so it includes "
                  f"Python, TensorFlow and Keras ({min(baselines):,.0f} MB before any work)")
        print(benchmark_lib.format_table(results))

    run_command(main)


COMMANDS = {"benchmark": benchmark}
