"""render_source: training plates composed by TF ops from the glyph atlas.

The TF renderer is checked against the PIL one (render.render_plate) pixel for pixel, for the
same face, size, spacing and position; then the stream: its ranges, its determinism per
(seed, plate) and the plates each input pipeline and each epoch get.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from plate_ocr.data import atlas, fonts, records, render, writer
from plate_ocr.training import render_source


@pytest.fixture(scope="module")
def rendering(tiny_records):
    """(info, atlas path, atlas tensors) of the tiny records."""
    info = records.read_info(tiny_records)
    path = render_source.atlas_path(info, tiny_records)
    return info, path, render_source.read_atlas(path)


class _Picks:
    """An rng for render_plate whose integers() are render_source's picks of given uniforms."""

    def __init__(self, *uniforms):
        self.uniforms = list(uniforms)

    def integers(self, low: int, high: int) -> int:
        count = high - low
        return low + min(int(np.float32(self.uniforms.pop(0)) * np.float32(count)), count - 1)


def _chunk_choices(tensors, seed: int, chunk: int, count: int) -> dict[str, np.ndarray]:
    choices = render_source.draw_plates(tensors, seed, tf.constant(chunk, tf.int64))
    return {key: value.numpy()[:count] for key, value in choices.items()}


def test_plates_equal_the_pil_renderer_pixel_for_pixel(rendering, faces):
    info, _, tensors = rendering
    style = writer.style_from_info(info)
    flat = [face for family in fonts.group_by_family(faces["train"]) for face in family]
    drawn = _chunk_choices(tensors, seed=3, chunk=2, count=160)
    # Wider spacings than the writer draws, so that lines must shrink to fit the plate.
    wide_tensors = dict(tensors, spacing_max=tf.constant(40))
    widest = dict(drawn, size_index=np.full(160, style.font_size_max - style.font_size_min,
                                            np.int32),
                  spacing=np.full(160, 40, np.int32))
    shrunk = 0
    for atlas_tensors, choices in ((tensors, drawn), (wide_tensors, widest)):
        images = 255 - render_source.compose_ink(atlas_tensors, choices).numpy()
        assert images.shape == (160, style.spec.height, style.spec.width)
        assert images.dtype == np.uint8
        for j, image in enumerate(images):
            face = flat[choices["face"][j]]
            glyphs = render.load_glyphs(face.path, style.font_size_min + choices["size_index"][j],
                                        style.alphabet)
            expected, spacing = render.render_plate(
                [glyphs[style.alphabet[d]] for d in choices["label"][j]],
                int(choices["spacing"][j]), style.spec, _Picks(choices["x"][j], choices["y"][j]))
            np.testing.assert_array_equal(image, expected, err_msg=f"plate {j}, {face.name}")
            shrunk += spacing < choices["spacing"][j]
    assert shrunk > 10


def test_shorter_plates_equal_the_pil_renderer_of_their_characters(rendering, faces):
    # Labels ended by PAD (records of several plate lengths): only their characters are
    # drawn, placed as the PIL renderer places that many.
    info, _, tensors = rendering
    style = writer.style_from_info(info)
    flat = [face for family in fonts.group_by_family(faces["train"]) for face in family]
    choices = _chunk_choices(tensors, seed=5, chunk=1, count=80)
    lengths = 1 + np.arange(80) % style.plate_length  # 1 to 5 characters
    choices["label"] = np.where(np.arange(style.plate_length)[None, :] < lengths[:, None],
                                choices["label"], records.PAD).astype(np.int32)
    images = 255 - render_source.compose_ink(tensors, choices).numpy()
    for j, image in enumerate(images):
        face = flat[choices["face"][j]]
        glyphs = render.load_glyphs(face.path, style.font_size_min + choices["size_index"][j],
                                    style.alphabet)
        expected, _ = render.render_plate(
            [glyphs[style.alphabet[d]] for d in choices["label"][j][:lengths[j]]],
            int(choices["spacing"][j]), style.spec, _Picks(choices["x"][j], choices["y"][j]))
        np.testing.assert_array_equal(image, expected, err_msg=f"plate {j}, {lengths[j]} long")


def test_plates_cover_the_writers_ranges_with_all_ink_inside_the_margins(rendering):
    info, _, tensors = rendering
    style = writer.style_from_info(info)
    choices = {key: np.concatenate(parts) for key, parts in zip(
        ("label", "face", "size_index", "spacing", "x", "y"),
        # 8,192 plates: a face of the largest family (JetBrains Mono's 16) is drawn ~8.5 times.
        zip(*[_chunk_choices(tensors, 0, chunk, render_source.CHUNK).values()
              for chunk in range(8)]))}
    sizes = style.font_size_min + choices["size_index"]
    assert set(sizes) == set(range(style.font_size_min, style.font_size_max + 1))
    assert set(choices["spacing"]) == set(range(style.spacing_min, style.spacing_max + 1))
    assert set(choices["face"]) == set(range(len(info["fonts"]["train"])))
    assert (0 <= choices["x"]).all() and (choices["x"] < 1).all()
    images = 255 - render_source.compose_ink(tensors, {k: v[:512] for k, v in choices.items()}).numpy()
    margin = style.spec.margin
    ink = images < 255
    assert ink.sum(axis=(1, 2)).min() > 0
    assert not ink[:, :margin].any() and not ink[:, -margin:].any()
    assert not ink[:, :, :margin].any() and not ink[:, :, -margin:].any()


def _plates(path: str, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    batches = list(render_source.chunk_plates(path, seed, tf.constant(chunk, tf.int64), 64,
                                              128).batch(render_source.CHUNK))
    assert len(batches) == 1
    return batches[0][0].numpy(), batches[0][1].numpy()


def test_same_seed_and_plate_give_the_same_pixels_and_each_round_new_ones(rendering):
    info, path, _ = rendering
    images, labels = _plates(path, seed=0, chunk=1)
    again, labels_again = _plates(path, seed=0, chunk=1)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert labels.shape == (render_source.CHUNK, info["plate_length"])
    # Plate g has label g mod N: the stream cycles through the training labels in order.
    train_digits = [records.label_digits(number, info["alphabet"], records.plate_lengths(info))
                    for number in _train_labels(info)]
    num_train = len(train_digits)
    first = render_source.CHUNK % num_train
    assert labels[:3].tolist() == [train_digits[(first + j) % num_train] for j in range(3)]
    # The same label one round later: new pixels.
    same_label = [(j, j + num_train) for j in range(render_source.CHUNK - num_train)]
    assert all(labels[a].tolist() == labels[b].tolist() for a, b in same_label)
    differ = [not np.array_equal(images[a], images[b]) for a, b in same_label]
    assert np.mean(differ) > 0.9
    other_seed, _ = _plates(path, seed=1, chunk=1)
    assert np.mean([not np.array_equal(a, b) for a, b in zip(images, other_seed)]) > 0.9


def _train_labels(info: dict) -> list[int]:
    counts = {split: info["splits"][split]["num_examples"] for split in records.SPLITS}
    return records.draw_labels(counts, info["alphabet"], records.plate_lengths(info),
                               info["seed"])["train"].tolist()


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def test_each_input_pipeline_and_each_epoch_renders_its_own_chunks(rendering):
    _, path, _ = rendering
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    dataset = render_source.make_render_dataset(path, 32, 64, 128, 5, seed=0, first_chunk=4,
                                                input_context=context, shuffle_buffer=64)
    assert dataset.element_spec[0].shape == (32, 64, 128)
    assert dataset.element_spec[1].shape == (32, 5)
    streamed = np.concatenate([images.numpy() for images, *_ in dataset.take(64)])
    # Pipeline 1 of 2 from chunk 4: chunks 5, 7, ... two at a time (2,048 plates are chunks
    # 5 and 7, and the shuffle buffer's read-ahead of 9 and 11).
    ours = set().union(*(_digests(_plates(path, 0, chunk)[0]) for chunk in (5, 7, 9, 11)))
    assert _digests(streamed) <= ours
    assert not _digests(streamed) & _digests(_plates(path, 0, 4)[0])


def _numbered_chunk(path, seed, chunk, height, width, augment=None, clean_fraction=0.0,
                    alphabet=""):
    """chunk_plates' stand-in: plate j of a chunk is a 1x2 image and label (chunk, j)."""
    numbers = tf.stack([tf.fill([render_source.CHUNK], tf.cast(chunk, tf.int32)),
                        tf.range(render_source.CHUNK, dtype=tf.int32)], axis=1)
    images = tf.cast(tf.reshape(numbers, [-1, 1, 2]), tf.uint8)  # (shapes only)
    return tf.data.Dataset.from_tensor_slices((images, numbers, images))


@pytest.mark.parametrize("plates_per_epoch, shuffle_buffer, pipelines",
                         [(6400, 1000, 2), (3072, 500, 1), (6144, 300, 3), (2048, 2000, 2)])
def test_consecutive_epochs_render_their_own_plates(monkeypatch, plates_per_epoch,
                                                    shuffle_buffer, pipelines):
    # What epoch_chunks promises the trainer: epoch e starts at chunk e * epoch_chunks, and
    # whatever its pipelines hand out in an epoch (plates_per_epoch between them, through a
    # shuffle buffer that reads ahead) comes from the chunks before the next epoch's first,
    # so no two epochs share a plate. Read through make_render_dataset's own interleave and
    # shuffle, with plates that carry their (chunk, number).
    monkeypatch.setattr(render_source, "chunk_plates", _numbered_chunk)
    stride = render_source.epoch_chunks(plates_per_epoch, shuffle_buffer, pipelines)
    batch = 32
    steps = plates_per_epoch // (pipelines * batch)
    seen = []
    for epoch in range(3):
        plates = set()
        for pipeline in range(pipelines):
            context = tf.distribute.InputContext(pipelines, pipeline, pipelines)
            dataset = render_source.make_render_dataset(
                "unused", batch, 1, 2, 2, seed=0, first_chunk=epoch * stride,
                input_context=context, shuffle_buffer=shuffle_buffer)
            for _, labels, *_ in dataset.take(steps):
                plates.update(map(tuple, labels.numpy().tolist()))
        assert len(plates) == steps * batch * pipelines == plates_per_epoch  # none twice
        chunks = {chunk for chunk, _ in plates}
        assert min(chunks) >= epoch * stride and max(chunks) < (epoch + 1) * stride, (
            epoch, stride, sorted(chunks))
        seen.append(plates)
    assert not seen[0] & seen[1] and not seen[1] & seen[2]


def test_records_without_a_sound_atlas_are_a_one_line_error(tiny_records, tmp_path):
    records_dir = str(tmp_path / "records")
    shutil.copytree(tiny_records, records_dir)
    info = records.read_info(records_dir)
    path = os.path.join(records_dir, atlas.ATLAS_NAME)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(ValueError, match="corrupt"):
        render_source.atlas_path(info, records_dir)
    os.remove(path)
    with pytest.raises(ValueError, match="missing"):
        render_source.atlas_path(info, records_dir)
    del info["glyph_atlas"]
    with pytest.raises(ValueError, match="no glyph atlas"):
        render_source.atlas_path(info, records_dir)
    json.dumps(info)  # the info stays plain JSON
