"""The import_images command: a user's labelled plate images as records (importer.py).

absl code like the rest of cli/ (helpers in common.py): flags are defined when the command starts.
"""

import collections
import os
import sys

from absl import flags

from plate_ocr.cli.common import FLAGS, CommandError, plate_lengths, run_command


def _lengths(requested: list[str], plate_length: int,
             found: collections.Counter) -> list[int]:
    """The plate lengths to import: --plate_lengths (numbers, or all: every length found),
    else --plate_length, else the commonest length found (none when no row was read)."""
    if requested == ["all"]:
        return sorted(found)
    if requested:
        return plate_lengths(requested, ", or all")
    if plate_length:
        return [plate_length]
    return [found.most_common(1)[0][0]] if found else []


def import_images() -> None:
    """Writes a folder or CSV / TSV list of labelled plate images as records."""
    flags.DEFINE_string("input", None, "A folder of images (labels from the file names) or a "
                        "list: .csv rows path,label[,split]; .tsv or .txt rows "
                        "path<TAB>label[<TAB>split] (paths relative to the list).",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where the records go.", required=True)
    flags.DEFINE_string("alphabet", "0123456789", "Characters of the plates.")
    flags.DEFINE_integer("plate_length", 0, "Characters per plate (0: the most common length "
                         "of the labels; the others are reported).", lower_bound=0)
    flags.DEFINE_list("plate_lengths", [], "Plates of several lengths instead: the numbers of "
                      "characters a plate may have (e.g. 4,5,6,7,8), or 'all' for every length "
                      "of the labels; the others are reported.")
    flags.DEFINE_integer("image_height", 64, "Height the images are fitted to.", lower_bound=8)
    flags.DEFINE_integer("image_width", 128, "Width the images are fitted to.", lower_bound=8)
    flags.DEFINE_float("val_fraction", 0.1, "Of the labels without a split, the share drawn "
                       "for validation.", lower_bound=0, upper_bound=1)
    flags.DEFINE_float("test_fraction", 0.1, "Of the labels without a split, the share drawn "
                       "for test.", lower_bound=0, upper_bound=1)
    flags.DEFINE_integer("shards", 4, "Shards per split (at most one per image).",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the split drawn by label.")
    flags.DEFINE_boolean("strict", False, "Any row that cannot be imported is an error, and "
                         "nothing is written.")
    flags.DEFINE_boolean("overwrite", False, "Replace records already in --output_dir.")

    def main(argv):
        from tqdm import tqdm
        from plate_ocr.data import importer, records
        if FLAGS.val_fraction + FLAGS.test_fraction > 1:
            raise CommandError("--val_fraction and --test_fraction must not add up to more "
                               "than 1")
        if len(set(FLAGS.alphabet)) != len(FLAGS.alphabet) or not FLAGS.alphabet:
            raise CommandError(f"--alphabet must be distinct characters, got {FLAGS.alphabet!r}")
        if (os.path.exists(os.path.join(FLAGS.output_dir, records.INFO_NAME))
                and not FLAGS.overwrite):
            raise CommandError(f"{FLAGS.output_dir} already holds finished records "
                               f"({records.INFO_NAME}); pass --overwrite to replace them")
        try:
            rows, problems = importer.read_rows(FLAGS.input, FLAGS.alphabet)
        except ValueError as error:
            raise CommandError(str(error)) from None
        lengths = _lengths(FLAGS.plate_lengths, FLAGS.plate_length,
                           collections.Counter(len(row.label) for row in rows))
        rows, bad = importer.check_labels(rows, FLAGS.alphabet, lengths)
        problems += bad
        rows, bad = importer.assign_splits(rows, FLAGS.val_fraction, FLAGS.test_fraction,
                                           FLAGS.seed)
        problems += bad
        with tqdm(total=len(rows), unit="image", desc="import_images", disable=not rows) as bar:
            loaded, bad = importer.load_images(rows, FLAGS.image_height, FLAGS.image_width,
                                               lambda: bar.update(1))
        problems += bad
        for problem in problems:
            print(f"not imported: {problem.source}: {problem.reason}", file=sys.stderr)
        if problems and FLAGS.strict:
            raise CommandError(f"{len(problems)} rows cannot be imported (--strict): nothing "
                               "written")
        if not loaded:
            raise CommandError(f"no image of {FLAGS.input} could be imported")
        try:
            info = importer.write_records(FLAGS.output_dir, loaded, FLAGS.alphabet,
                                          lengths, FLAGS.shards, FLAGS.input, problems,
                                          FLAGS.seed)
        except OSError as error:
            raise CommandError(f"writing records to {FLAGS.output_dir} failed: "
                               f"{error.strerror or error}") from None
        splits = ", ".join(f"{split} {entry['num_examples']:,}"
                           for split, entry in info["splits"].items())
        print(f"imported {len(loaded):,} of {len(loaded) + len(problems):,} rows ({splits}; "
              f"{' or '.join(map(str, lengths))} characters each) to {FLAGS.output_dir}; "
              f"{len(problems):,} not "
              f"imported, listed in {os.path.join(FLAGS.output_dir, importer.REPORT_NAME)}")

    run_command(main)


COMMANDS = {"import_images": import_images}
