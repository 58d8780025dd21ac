"""The commands that use a trained model: evaluate, predict, export, make_test_images.

absl code like the rest of cli/ (helpers in common.py): flags are defined when a command starts.
"""

import json
import os
import sys

from absl import flags

from plate_ocr.cli.common import FLAGS, CommandError, quiet_tensorflow, run_command
from plate_ocr.paths import project_path

_MODEL_HELP = ("A model dir (runs/fast), its SavedModel (runs/fast/export), .keras or .tflite "
               "file.")


def _load(path: str):
    from plate_ocr.serving import evaluate
    try:
        return evaluate.load_predictor(path)
    except (FileNotFoundError, OSError, ValueError) as error:
        raise CommandError(str(error).splitlines()[0]) from None


# ---------------------------------------------------------------- evaluate

def _evaluate_split(predict, records_dir: str, info: dict, split: str, model_dir: str,
                    output: str) -> dict:
    """Evaluates one split: metrics file, pictures, table; returns the metrics."""
    from tqdm import tqdm
    from plate_ocr.serving import evaluate as evaluate_lib, pictures
    with tqdm(total=info["splits"][split]["num_examples"], unit="plate",
              desc=f"evaluate {split}") as bar:
        try:
            result, misread = evaluate_lib.evaluate_split(
                predict, records_dir, split, FLAGS.batch_size, on_batch=bar.update,
                skip_corrupt=FLAGS.skip_corrupt)
        except ValueError as error:
            raise CommandError(str(error)) from None
    result = dict(result, split=split, records_dir=records_dir, model=FLAGS.model)
    picture_dir = os.path.join(model_dir, "pictures")
    result["pictures"] = {"confusion": pictures.confusion_png(
        result["confusion"], info["alphabet"], os.path.join(picture_dir, f"{split}-confusion.png"),
        f"{split}: {result['plates']:,} plates")}
    result["pictures"]["reliability"] = pictures.reliability_png(
        result["calibration"]["bins"], os.path.join(picture_dir, f"{split}-reliability.png"),
        f"{split}: {result['plates']:,} plates, ECE {result['calibration']['ece']:.4f}")
    if misread:
        images, predictions, truths = zip(*misread)
        result["pictures"]["misread"] = pictures.save_png(
            pictures.prediction_grid(images, predictions, truths, columns=6),
            os.path.join(picture_dir, f"{split}-misread.png"))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(evaluate_lib.format_table(result))
    print(f"metrics: {output}; pictures: {', '.join(result['pictures'].values())}")
    return result


def _evaluate_non_plates(predict, shape, model_dir: str) -> None:
    """Images that are no plate (noise, blank, photo-like): how many pass the threshold."""
    from plate_ocr.serving import calibration
    threshold = predict.min_confidence
    result = calibration.rejection(predict, FLAGS.non_plates, *shape, threshold)
    path = os.path.join(model_dir, "metrics-non_plates.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(result, min_confidence=threshold, model=FLAGS.model), f, indent=1)
    print(f"non-plates read at or above min confidence {threshold:g}: " + "; ".join(
        f"{kind} {r['accepted']}/{r['images']} (highest confidence {r['max_confidence']:.4f})"
        for kind, r in result.items()) + f"; metrics: {path}")


def evaluate() -> None:
    """Evaluates a model on records splits: tables, metrics files and pictures."""
    quiet_tensorflow()
    flags.DEFINE_string("model", "runs/fast", _MODEL_HELP)
    flags.DEFINE_list("split", ["test"], "Splits to evaluate, side by side (test, test_aug, "
                      "heldout, foreign, captcha, val).")
    flags.DEFINE_string("records_dir", None, "Records (default: those the model trained on).")
    flags.DEFINE_string("output_json", None, "Metrics file of a single split (default: "
                        "<model dir>/metrics.json for test, metrics-<split>.json otherwise).")
    flags.DEFINE_integer("batch_size", 512, "Plates per prediction call.", lower_bound=1)
    flags.DEFINE_boolean("skip_corrupt", False, "Leave out shards that are missing or corrupt "
                         "(and report the records lost) instead of stopping.")
    flags.DEFINE_integer("non_plates", 100, "Images of each kind that is no plate (noise, "
                         "blank, photo-like) to read: how many pass the model's min confidence "
                         "(0: none).", lower_bound=0)

    def main(argv):
        from plate_ocr.data import records
        model_dir = FLAGS.model if os.path.isdir(FLAGS.model) else os.path.dirname(FLAGS.model)
        model_dir = model_dir[:-len("/export")] if model_dir.endswith("/export") else model_dir
        records_dir = FLAGS.records_dir
        if records_dir is None:
            from plate_ocr.serving import export as export_lib
            config_path = os.path.join(model_dir, export_lib.CONFIG_FILE)
            records_dir = (json.load(open(config_path))["train"]["records_dir"]
                           if os.path.exists(config_path) else "tfrecords")
        if FLAGS.output_json and len(FLAGS.split) > 1:
            raise CommandError("--output_json names the file of a single --split")
        try:
            info = records.read_info(records_dir)
            for split in FLAGS.split:
                records.split_files(info, records_dir, split)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        predict, shape = _load(FLAGS.model)
        results = {}
        for split in FLAGS.split:
            name = "metrics.json" if split == "test" else f"metrics-{split}.json"
            results[split] = _evaluate_split(predict, records_dir, info, split, model_dir,
                                             FLAGS.output_json or os.path.join(model_dir, name))
        if FLAGS.non_plates:
            _evaluate_non_plates(predict, shape, model_dir)
        if len(results) > 1:
            threshold = f"{predict.min_confidence:g}"
            print(f"\n{'split':10s} {'plates':>7s} {'plate acc':>10s} {'char acc':>9s} {'CER':>7s}"
                  f" {'ECE':>7s} {'cov@' + threshold:>9s} {'acc@' + threshold:>9s}")
            for split, m in results.items():
                at = next(t for t in m["calibration"]["thresholds"]
                          if t["threshold"] == predict.min_confidence)
                accepted = (f"{at['accuracy_accepted']:9.4f}" if at["accepted"]
                            else f"{'-':>9s}")
                print(f"{split:10s} {m['plates']:7,d} {m['plate_accuracy']:10.4f} "
                      f"{m['char_accuracy']:9.4f} {m['cer']:7.4f} {m['calibration']['ece']:7.4f} "
                      f"{at['coverage']:9.4f} {accepted}")

    run_command(main)


# ---------------------------------------------------------------- predict

UNREADABLE = "unreadable"  # what bin/predict prints for a reading under --min_confidence


def accuracy_line(labelled: list[tuple[str, str]]) -> str:
    """bin/predict's accuracy line over (reading, label) pairs: unreadable ones are rejected;
    accuracy and errors are those of the accepted readings."""
    accepted = [(text, label) for text, label in labelled if text != UNREADABLE]
    right = sum(text == label for text, label in accepted)
    accuracy = f"{right / len(accepted):.4f}" if accepted else "-"
    coverage = len(accepted) / max(len(labelled), 1)
    return (f"accuracy: {accuracy} ({right}/{len(accepted)} accepted); coverage {coverage:.4f} "
            f"({len(accepted)}/{len(labelled)}, {len(labelled) - len(accepted)} unreadable); "
            f"errors among accepted {len(accepted) - right}")


def predict() -> None:
    """Reads plates from image files and folders: one line per image."""
    quiet_tensorflow()
    flags.DEFINE_string("model", "runs/fast", _MODEL_HELP)
    flags.DEFINE_integer("batch_size", 256, "Images per prediction call.", lower_bound=1)
    flags.DEFINE_boolean("labels_from_filenames", False, "The label is the last run of the "
                         "model's characters (its config.json's alphabet; digits without one) "
                         "in each file's name: report accuracy.")
    flags.DEFINE_string("contact_sheet", None, "Write a PNG of every image with its reading.")
    flags.DEFINE_float("min_confidence", None, "Readings whose confidence (the probability of "
                       "the reading) is under this print `unreadable` (default: the threshold "
                       "stored in the model's export; 0 reads everything).", lower_bound=0,
                       upper_bound=1)

    def main(argv):
        from plate_ocr.data import predict as predict_lib
        from plate_ocr.serving import evaluate, pictures
        if len(argv) < 2:
            raise CommandError("name image files or folders to read")
        paths = predict_lib.list_images(argv[1:])
        if not paths:
            raise CommandError(f"no image files in {' '.join(argv[1:])}")
        predict_fn, (height, width) = _load(FLAGS.model)
        threshold = (predict_fn.min_confidence if FLAGS.min_confidence is None
                     else FLAGS.min_confidence)
        failures, rows = 0, []
        for start in range(0, len(paths), FLAGS.batch_size):
            images, good = [], []
            for path in paths[start:start + FLAGS.batch_size]:
                try:
                    images.append(predict_lib.load_image(path, height, width))
                    good.append(path)
                except ValueError as error:
                    print(f"predict: error: {error}", file=sys.stderr)
                    failures += 1
            if not images:
                continue
            texts, confidences = predict_fn(images)
            for path, image, text, confidence in zip(good, images, texts, confidences):
                reading = text if confidence >= threshold else UNREADABLE
                print(f"{path}\t{reading}\t{confidence:.4f}")
                rows.append((path, image, reading))
        truths = [None] * len(rows)
        if FLAGS.labels_from_filenames:
            alphabet = evaluate.model_alphabet(FLAGS.model) or predict_lib.DIGITS
            truths = [predict_lib.label_from_filename(path, alphabet) for path, _, _ in rows]
            print(accuracy_line([(text, label) for (_, _, text), label in zip(rows, truths)
                                 if label is not None]))
        if FLAGS.contact_sheet and rows:
            pictures.save_png(pictures.prediction_grid([image for _, image, _ in rows],
                                                       [text for _, _, text in rows], truths,
                                                       columns=6), FLAGS.contact_sheet)
            print(f"contact sheet: {FLAGS.contact_sheet}")
        if failures:
            sys.exit(1)

    run_command(main, takes_arguments=True)


# ---------------------------------------------------------------- export

def export() -> None:
    """Writes another export format of a trained model dir."""
    quiet_tensorflow()
    flags.DEFINE_string("model_dir", "runs/fast", "A finished training run.")
    flags.DEFINE_enum("format", "tflite_dynamic", ["tflite_dynamic", "tflite", "saved_model"],
                      "Format to write (bin/train already wrote the SavedModel, .keras and "
                      "weights): tflite_dynamic (int8 weights, dynamic-range quantized: the "
                      "fastest on CPUs, the same readings), tflite (float32), or saved_model "
                      "(again: with another --plate_format).")
    flags.DEFINE_string("plate_format", None, "The readings the export may give (as bin/train's "
                        "--plate_format; \"\": exactly the plate length). Default: the run's.")

    def main(argv):
        import keras
        from plate_ocr.data import records
        from plate_ocr.serving import export as export_lib
        from plate_ocr.training import model, plate_format
        config_path = os.path.join(FLAGS.model_dir, export_lib.CONFIG_FILE)
        keras_path = os.path.join(FLAGS.model_dir, export_lib.KERAS_MODEL)
        if not (os.path.exists(config_path) and os.path.exists(keras_path)):
            raise CommandError(f"{FLAGS.model_dir} has no finished training run "
                               f"({export_lib.KERAS_MODEL} and "
                               f"{export_lib.CONFIG_FILE})")
        config = json.load(open(config_path))
        model_config = model.config_from_dict(config["model"])
        pattern = (config.get("plate_format", "") if FLAGS.plate_format is None
                   else FLAGS.plate_format)
        try:
            formats = plate_format.for_model(pattern, config["alphabet"],
                                             records.plate_lengths(config))
        except ValueError as error:
            raise CommandError(str(error)) from None
        trained = keras.models.load_model(keras_path)
        if FLAGS.format == "saved_model":
            path = export_lib.export_model(trained, model_config, FLAGS.model_dir,
                                           config["alphabet"], formats,
                                           config["image_height"],
                                           config["image_width"])["saved_model"]
        else:
            path = export_lib.export_tflite(
                trained, model_config, formats,
                os.path.join(FLAGS.model_dir, export_lib.TFLITE_FILES[FLAGS.format]),
                FLAGS.format)
        print(f"wrote {path}" + (f" (plate format {pattern})" if pattern else ""))

    run_command(main)


# ---------------------------------------------------------------- make_test_images

def make_test_images() -> None:
    """Writes PNG plates named by their label, with labels training never saw."""
    flags.DEFINE_string("records_dir", "tfrecords", "The records whose test labels to use.")
    flags.DEFINE_string("output_dir", "data/test", "Where the PNG files go.")
    flags.DEFINE_integer("count", 60, "Number of plates.", lower_bound=1)
    flags.DEFINE_string("font_dir", project_path("fonts"), "Gathered fonts.")

    def main(argv):
        from plate_ocr.data import fonts, records, writer
        try:
            info = records.read_info(FLAGS.records_dir)
            counts = {split: info["splits"].get(split, {}).get("num_examples", 0)
                      for split in records.SPLITS}
            if FLAGS.count > counts["test"]:
                raise ValueError(f"--count {FLAGS.count} is more than the {counts['test']} "
                                 "test labels")
            labels = records.draw_labels(counts, info["alphabet"], records.plate_lengths(info),
                                         info["seed"])
            faces, _ = fonts.usable_faces(FLAGS.font_dir, info["alphabet"], fonts.TRAIN, 1)
        except (FileNotFoundError, ValueError, fonts.FontError) as error:
            raise CommandError(str(error)) from None
        paths = writer.write_png_plates(FLAGS.output_dir, labels["test"][:FLAGS.count],
                                        fonts.group_by_family(faces),
                                        writer.style_from_info(info), info["seed"])
        print(f"wrote {len(paths)} plates to {FLAGS.output_dir} (test labels, unseen in training)")

    run_command(main)


COMMANDS = {"evaluate": evaluate, "predict": predict, "export": export,
            "make_test_images": make_test_images}
