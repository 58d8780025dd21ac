"""The tf.data pipeline over a tiny records dir."""

import numpy as np
import tensorflow as tf

from plate_ocr.data import records
from plate_ocr.training import input_pipeline


def _files(records_dir, split):
    info = records.read_info(records_dir)
    return info, records.split_files(info, records_dir, split)


def _labels(dataset, batches=None):
    seen = []
    for i, (images, labels, weights) in enumerate(dataset):
        if batches is not None and i == batches:
            break
        keep = weights.numpy() > 0
        seen += ["".join(map(str, row)) for row in labels.numpy()[keep]]
    return seen


def test_training_batches_have_static_shapes_and_dtypes(tiny_records):
    info, files = _files(tiny_records, "train")
    dataset = input_pipeline.make_dataset(files, 32, True, 64, 128, 5, seed=1)
    assert dataset.element_spec[0].shape.as_list() == [32, 64, 128]
    images, labels, weights = next(iter(dataset))
    assert images.dtype == tf.uint8 and images.shape == (32, 64, 128)
    assert labels.dtype == tf.int32 and labels.shape == (32, 5)
    assert weights.dtype == tf.float32 and np.all(weights.numpy() == 1)
    # Dark ink on a light plate, and labels are alphabet indices.
    assert images.numpy().max() == 255 and images.numpy().min() < 128
    assert labels.numpy().min() >= 0 and labels.numpy().max() <= 9


def test_tight_plates_weigh_more_in_training(tiny_records, read_examples):
    info, files = _files(tiny_records, "train")
    tight = input_pipeline.TightPlates(weight=3.0, font_size=21, spacing=4)
    expected = {example["text"]: 3.0 if example["font_size"] <= 21 and example["spacing"] <= 4
                else 1.0 for example in read_examples(files)}
    assert set(expected.values()) == {1.0, 3.0}
    dataset = input_pipeline.make_dataset(files, 50, True, 64, 128, 5, seed=1, tight=tight)
    seen = {}
    for _, labels, weights in dataset.take(4):  # one pass of the 200 plates
        for row, weight in zip(labels.numpy(), weights.numpy()):
            seen["".join(map(str, row))] = weight
    assert seen == expected


def test_training_repeats_and_each_pass_covers_the_split(tiny_records):
    info, files = _files(tiny_records, "train")
    dataset = input_pipeline.make_dataset(files, 50, True, 64, 128, 5, shuffle_buffer=1000,
                                          seed=3)
    seen = _labels(dataset, batches=8)  # two passes of 200
    assert len(seen) == 400 and sorted(seen[:200]) == sorted(seen[200:])
    assert len(set(seen)) == 200 and seen[:200] != seen[200:]


def test_evaluation_reads_every_example_once_with_a_padded_last_batch(tiny_records):
    info, files = _files(tiny_records, "val")
    dataset = input_pipeline.make_dataset(files, 16, False, 64, 128, 5)
    batches = list(dataset)
    assert len(batches) == 3  # 40 plates: 16 + 16 + 8 (padded to 16)
    assert all(b[0].shape == (16, 64, 128) for b in batches)
    assert batches[-1][2].numpy().tolist() == [1.0] * 8 + [0.0] * 8
    seen = _labels(dataset)
    assert len(seen) == 40 == len(set(seen))


def test_input_context_splits_files_between_pipelines(tiny_records):
    info, files = _files(tiny_records, "train")
    per_pipeline = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset = input_pipeline.make_dataset(files, 10, False, 64, 128, 5,
                                              input_context=context)
        per_pipeline.append(_labels(dataset))
    assert len(per_pipeline[0]) == len(per_pipeline[1]) == 100
    assert not set(per_pipeline[0]) & set(per_pipeline[1])
    assert len(set(per_pipeline[0]) | set(per_pipeline[1])) == 200


def test_fewer_files_than_pipelines_splits_records(tiny_records):
    info, files = _files(tiny_records, "val")  # 2 shards, 3 pipelines
    seen = []
    for pipeline_id in range(3):
        context = tf.distribute.InputContext(3, pipeline_id, 3)
        seen += _labels(input_pipeline.make_dataset(files, 8, False, 64, 128, 5,
                                                    input_context=context))
    assert len(seen) == 40 == len(set(seen))


def test_mixed_training_draws_each_source_in_its_fraction_within_every_batch(tmp_path):
    def shards(level: int, count: int) -> list[str]:  # plates all of one grey level
        image = np.full((8, 16), level, np.uint8)
        examples = [records.encode_example(image, [1, 2], "12", "face", 20, 0)
                    for _ in range(count)]
        name = f"level{level}.tfrecord"
        records.write_shard_file(str(tmp_path), name, examples)
        return [str(tmp_path / name)]
    own, mixed = shards(0, 50), shards(255, 30)
    dataset = input_pipeline.make_dataset(own, 32, True, 8, 16, 2, shuffle_buffer=50, seed=3,
                                          mix=[(mixed, 0.3)])
    shares = [float(np.mean(images.numpy()[:, 0, 0] == 255))
              for images, _, _ in dataset.take(300)]
    assert abs(np.mean(shares) - 0.3) < 0.02  # 9,600 plates: a deviation of 0.005
    assert np.mean([0 < share < 1 for share in shares]) > 0.99  # mixed within batches
    again = input_pipeline.make_dataset(own, 32, True, 8, 16, 2, shuffle_buffer=50, seed=3,
                                        mix=[(mixed, 0.3)])
    assert shares[:20] == [float(np.mean(images.numpy()[:, 0, 0] == 255))
                           for images, _, _ in again.take(20)]  # the seed's order
