"""The data commands: gather_fonts (the faces into fonts/) and make_records (the plates as records).

absl code like the rest of cli/ (helpers in common.py): flags are defined when a command starts.
"""

import os
import sys

from absl import flags

from plate_ocr.cli.common import (FLAGS, CommandError, plate_lengths, quiet_tensorflow,
                                   run_command)
from plate_ocr.paths import project_path


def _flag_values(names) -> dict:
    return {name: FLAGS[name].value for name in names}


# ---------------------------------------------------------------- gather_fonts

def gather_fonts() -> None:
    """Copies the manifest's faces into fonts/ and verifies them."""
    flags.DEFINE_string("font_dir", project_path("fonts"), "Folder with manifest.tsv.")
    flags.DEFINE_string("alphabet", "0123456789", "Characters every face must draw.")

    def main(argv):
        from plate_ocr.data import fonts
        manifest = os.path.join(FLAGS.font_dir, fonts.MANIFEST_NAME)
        if not os.path.exists(manifest):
            raise CommandError(f"no font manifest at {manifest}")
        entries = fonts.read_manifest(manifest)
        missing = fonts.gather(entries, FLAGS.font_dir)
        if missing:
            packages = fonts.debian_packages(missing)
            others = sorted({e.source for e in missing if not e.source.startswith("debian:")})
            raise CommandError(
                f"{len(missing)} font files are not installed; run: "
                + " and ".join(filter(None, [
                    packages and "apt-get install -y " + " ".join(packages),
                    others and "pip install " + " ".join(s.split(":", 1)[1] for s in others)])))
        summary = []
        for split in (fonts.TRAIN, fonts.HELDOUT, fonts.FOREIGN):
            faces, rejected = fonts.usable_faces(FLAGS.font_dir, FLAGS.alphabet, split, 0)
            for file, reason in rejected.items():
                print(f"left out {file}: {reason}", file=sys.stderr)
            summary.append(f"{len(faces)} {split} faces of "
                           f"{len({f.family for f in faces})} families")
        print(f"{FLAGS.font_dir}: " + ", ".join(summary))

    run_command(main)


# ---------------------------------------------------------------- make_records

_MAKE_RECORDS_FLAGS = (
    "output_dir", "num_train", "num_val", "num_test", "num_heldout", "shards", "eval_shards",
    "seed", "workers", "font_dir", "min_font_families", "font_size_min", "font_size_max",
    "spacing_min", "spacing_max", "alphabet", "plate_length", "plate_lengths", "overwrite",
    "num_test_aug", "num_val_aug", "augment_train", "num_foreign", "num_captcha")


def _define_augment_flags() -> list[str]:
    """One --aug_<name> flag per AugmentConfig field, its default the dataclass's."""
    import dataclasses
    from plate_ocr.data import augment_config
    names = []
    for field in dataclasses.fields(augment_config.AugmentConfig):
        about = f"Augmentation: {field.name.replace('_', ' ')}"
        if field.type in (str, "str"):
            flags.DEFINE_string(f"aug_{field.name}", field.default, about + " (characters).")
        else:
            define = flags.DEFINE_integer if field.type in (int, "int") else flags.DEFINE_float
            define(f"aug_{field.name}", field.default, about + " (probabilities 0-1).",
                   lower_bound=0)
        names.append(f"aug_{field.name}")
    return names


def _foreign_faces():
    """The foreign faces (foreign.usable_faces), or CommandError if Cairo cannot load."""
    try:
        from plate_ocr.data import foreign
    except (ImportError, OSError) as error:  # cairocffi or libcairo2 not installed
        raise CommandError(f"Cairo, which draws the foreign split, cannot load ({error}): run "
                           "bin/setup, or pass --num_foreign 0") from None
    return foreign.usable_faces(FLAGS.font_dir, FLAGS.alphabet)


def _captcha_split():
    """The captcha_split module, or CommandError if the captcha package cannot be imported."""
    try:
        from plate_ocr.data import captcha_split
    except ImportError as error:
        raise CommandError(f"the captcha package, which draws the captcha split, cannot be "
                           f"imported ({error}): run bin/setup, or pass --num_captcha 0") from None
    return captcha_split


def make_records() -> None:
    """Renders the plates and writes sharded TFRecords plus dataset_info.json."""
    flags.DEFINE_string("output_dir", "tfrecords", "Where the shards and metadata go.")
    flags.DEFINE_integer("num_train", 60000, "Training plates (all labels distinct).", lower_bound=1)
    flags.DEFINE_integer("num_val", 5000, "Validation plates.", lower_bound=0)
    flags.DEFINE_integer("num_test", 10000, "Test plates.", lower_bound=0)
    flags.DEFINE_integer("num_heldout", 2000, "Plates in held-out font families (test labels).",
                         lower_bound=0)
    flags.DEFINE_integer("shards", 16, "Shards of the training split.", lower_bound=1)
    flags.DEFINE_integer("eval_shards", 2, "Shards of each evaluation split.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of labels and plates.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1,
                         "Writer processes (0: write in this process).", lower_bound=0)
    flags.DEFINE_string("font_dir", project_path("fonts"), "Gathered fonts and manifest.tsv.")
    flags.DEFINE_integer("min_font_families", 22, "Fewer usable training families is an error.",
                         lower_bound=1)
    flags.DEFINE_integer("font_size_min", 18, "Smallest font size (pixels per em).", lower_bound=4)
    flags.DEFINE_integer("font_size_max", 25, "Largest font size.", lower_bound=4)
    flags.DEFINE_integer("spacing_min", 0, "Least extra pixels between characters.")
    flags.DEFINE_integer("spacing_max", 8, "Most extra pixels between characters (reduced "
                         "where a wide face would not fit).")
    flags.DEFINE_string("alphabet", "0123456789", "Characters of the plates.")
    flags.DEFINE_integer("plate_length", 5, "Characters per plate.", lower_bound=1)
    flags.DEFINE_list("plate_lengths", [], "Plates of several lengths instead, as even in "
                      "number as each length's distinct labels allow (e.g. 4,5,6; "
                      "--plate_length is then ignored).")
    flags.DEFINE_boolean("overwrite", False, "Replace records already in --output_dir.")
    flags.DEFINE_integer("num_test_aug", 2000, "Augmented plates of test labels (the "
                         "augmented test split).", lower_bound=0)
    flags.DEFINE_integer("num_val_aug", 2000, "Augmented plates of validation labels (what "
                         "bin/train --val_split=val_aug validates on).", lower_bound=0)
    flags.DEFINE_integer("num_foreign", 2000, "Plates of test labels drawn by Cairo in font "
                         "families training never uses, as crops of other sizes (the foreign "
                         "split: how the model generalizes); 0: none.", lower_bound=0)
    flags.DEFINE_integer("num_captcha", 1000, "Plates of test labels drawn by the captcha "
                         "package as distorted captchas (the captcha split: another program's "
                         "style); 0: none.", lower_bound=0)
    flags.DEFINE_boolean("augment_train", False, "Augment the training plates too (blur, "
                         "noise, tilt, lighting...: see the --aug_* flags).")
    augment_flags = _define_augment_flags()

    def main(argv):
        from tqdm import tqdm
        from plate_ocr.data import fonts, records, writer
        quiet_tensorflow()  # the workers that augment load it
        if FLAGS.font_size_min > FLAGS.font_size_max:
            raise CommandError("--font_size_min must not exceed --font_size_max")
        if FLAGS.spacing_min > FLAGS.spacing_max:
            raise CommandError("--spacing_min must not exceed --spacing_max")
        if len(set(FLAGS.alphabet)) != len(FLAGS.alphabet) or not FLAGS.alphabet:
            raise CommandError(f"--alphabet must be distinct characters, got {FLAGS.alphabet!r}")
        existing = writer.existing_output(FLAGS.output_dir)
        if os.path.exists(os.path.join(FLAGS.output_dir, records.INFO_NAME)):
            if not FLAGS.overwrite:
                raise CommandError(f"{FLAGS.output_dir} already holds finished records "
                                   f"({records.INFO_NAME}); pass --overwrite to replace them")
        elif existing:
            # No metadata: the shards of a run that was killed. Rendering is a pure function
            # of the flags, so writing again gives what the finished run would have.
            print(f"removing {len(existing)} shards of an unfinished run in {FLAGS.output_dir}",
                  file=sys.stderr)
        lengths = (plate_lengths(FLAGS.plate_lengths) if FLAGS.plate_lengths
                   else [FLAGS.plate_length])
        counts = {"train": FLAGS.num_train, "val": FLAGS.num_val, "test": FLAGS.num_test}
        for split, base in records.DERIVED_SPLITS.items():
            # They reuse another split's labels: left at their defaults, they shrink with it.
            flag = FLAGS[f"num_{split}"]
            counts[split] = flag.value if flag.present else min(flag.value, counts[base])
        # The foreign and captcha splits read test labels too (their LABELS_FROM), and shrink
        # with them; writer.write_dataset does not render them: their add_split does, after it.
        drawn = {name: FLAGS[f"num_{name}"].value if FLAGS[f"num_{name}"].present
                 else min(FLAGS[f"num_{name}"].value, counts["test"])
                 for name in ("foreign", "captcha")}
        num_foreign, num_captcha = drawn["foreign"], drawn["captcha"]
        try:
            for name, count in drawn.items():
                if count > counts["test"]:
                    raise ValueError(f"--num_{name} ({count}) must not exceed --num_test "
                                     f"({counts['test']}): its plates reuse test labels")
            labels = records.draw_labels(counts, FLAGS.alphabet, lengths, FLAGS.seed)
            train_faces, rejected = fonts.usable_faces(
                FLAGS.font_dir, FLAGS.alphabet, fonts.TRAIN, FLAGS.min_font_families)
            heldout_faces, rejected_heldout = fonts.usable_faces(
                FLAGS.font_dir, FLAGS.alphabet, fonts.HELDOUT, 1 if FLAGS.num_heldout else 0)
            from plate_ocr.data import augment_config
            augment_values = augment_config.AugmentConfig(
                **{name[len("aug_"):]: FLAGS[name].value for name in augment_flags})
            style = writer.PlateStyle(
                FLAGS.alphabet, max(lengths), FLAGS.font_size_min, FLAGS.font_size_max,
                FLAGS.spacing_min, FLAGS.spacing_max, augment=augment_values,
                augmented_splits=writer.PlateStyle.augmented_splits
                + (("train",) if FLAGS.augment_train else ()),
                plate_lengths=tuple(lengths) if len(lengths) > 1 else ())
            writer.check_fit(train_faces + heldout_faces, style)
            foreign_faces, rejected_foreign = _foreign_faces() if num_foreign else ([], {})
            captcha_split = _captcha_split() if num_captcha else None
        except (ValueError, fonts.FontError) as error:
            raise CommandError(str(error)) from None
        for file, reason in {**rejected, **rejected_heldout, **rejected_foreign}.items():
            print(f"left out font {file}: {reason}", file=sys.stderr)
        total = sum(counts.values()) + num_foreign + num_captcha
        with tqdm(total=total, unit="plate", desc="make_records", smoothing=0.1) as bar:
            try:
                info = writer.write_dataset(
                    FLAGS.output_dir, labels,
                    {split: FLAGS.shards if split == "train" else FLAGS.eval_shards
                     for split in records.SPLITS},
                    {"train": train_faces, "heldout": heldout_faces}, style, FLAGS.seed,
                    FLAGS.workers, bar.update, {"flags": _flag_values(_MAKE_RECORDS_FLAGS + tuple(augment_flags))})
                if num_foreign:
                    from plate_ocr.data import foreign
                    info = foreign.add_split(
                        FLAGS.output_dir, info, labels[foreign.LABELS_FROM][:num_foreign],
                        foreign_faces, FLAGS.eval_shards, bar.update)
                if num_captcha:
                    info = captcha_split.add_split(
                        FLAGS.output_dir, info, labels[captcha_split.LABELS_FROM][:num_captcha],
                        FLAGS.eval_shards, bar.update)
            except OSError as error:  # disk full, permissions: no shard is left half-written
                raise CommandError(f"writing records to {FLAGS.output_dir} failed: "
                                   f"{error.strerror or error}") from None
        seconds = info["write_seconds"] + sum(info.get(f"{name}_write_seconds", 0)
                                              for name in drawn)
        counts.update(drawn)
        print(f"wrote {total:,} plates ({', '.join(f'{s} {n:,}' for s, n in counts.items())}) "
              f"to {FLAGS.output_dir} in {seconds:.1f} s ({total / seconds:,.0f} plates/s, "
              f"{FLAGS.workers} workers, {info['max_worker_rss_mb']:.0f} MB per worker)")

    run_command(main)


COMMANDS = {"gather_fonts": gather_fonts, "make_records": make_records}
