"""The input stages of bin/benchmark: the TFRecord pipeline against a PNG folder, and the
training pipeline through a local tf.data service. TensorFlow is imported inside the functions,
which run in their own processes (figures.run_measured).
"""

import os
import shutil
import socket
import subprocess
import sys
import time

from plate_ocr import paths
from plate_ocr.data import records
from plate_ocr.benchmark.figures import BATCH, median_seconds, run_measured


def _normalized(dataset):
    """Both pipelines end the same way: float32 pixels in 0..1, in parallel, prefetched."""
    import tensorflow as tf
    return (dataset.map(lambda images, *rest: (tf.cast(images, tf.float32) / 255.0, *rest),
                        num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _pipeline_rate(dataset, examples: int, repeats: int) -> float:
    """Examples/s of pulling batches of BATCH from a dataset (one untimed pass first)."""
    iterator = iter(dataset)
    batches = max(1, examples // BATCH)

    def run():
        for _ in range(batches):
            next(iterator)
    return batches * BATCH / median_seconds(run, repeats)


def _tfrecord_pipeline(records_dir: str, examples: int, repeats: int) -> dict:
    from plate_ocr.training import input_pipeline
    info = records.read_info(records_dir)
    dataset = input_pipeline.make_dataset(
        records.split_files(info, records_dir, "train"), BATCH, True, info["image_height"],
        info["image_width"], info["plate_length"], seed=0)
    return {"tfrecord_examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _png_pipeline(png_dir: str, info: dict, examples: int, repeats: int) -> dict:
    import tensorflow as tf
    shape = [info["image_height"], info["image_width"]]
    alphabet = tf.constant(list(info["alphabet"]))

    def load(path):
        image = tf.ensure_shape(tf.io.decode_png(tf.io.read_file(path), channels=1)[..., 0],
                                shape)
        # The label is in the name, <index>_<text>.png.
        text = tf.strings.split(tf.strings.split(path, os.sep)[-1], "_")[-1]
        chars = tf.strings.bytes_split(tf.strings.substr(text, 0, info["plate_length"]))
        label = tf.argmax(tf.cast(chars[:, None] == alphabet[None, :], tf.int32), axis=1,
                          output_type=tf.int32)
        return image, label

    dataset = (tf.data.Dataset.list_files(os.path.join(png_dir, "*.png"), shuffle=True, seed=0)
               .repeat()
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
               .batch(BATCH, drop_remainder=True))
    return {"png_examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _service_pipeline(records_dir: str, service: str, examples: int, repeats: int) -> dict:
    from plate_ocr.training import input_pipeline
    info = records.read_info(records_dir)
    dataset = input_pipeline.make_service_dataset(
        records.split_files(info, records_dir, "train"), BATCH, info["image_height"],
        info["image_width"], info["plate_length"], service, seed=0)
    return {"examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


# The rendered pipelines' shuffle buffer: configs/fast.cfg's, which bin/run_all trains with.
# The untimed first pass fills it (10,000 augmented plates, the function's default, took ~20 s).
RENDER_SHUFFLE_BUFFER = 1024


def _render_pipeline(records_dir: str, service: str, examples: int, repeats: int,
                     augmented: bool = False) -> dict:
    from plate_ocr.data import writer
    from plate_ocr.training import render_source
    info = records.read_info(records_dir)
    dataset = render_source.make_render_dataset(
        render_source.atlas_path(info, records_dir), BATCH, info["image_height"],
        info["image_width"], info["plate_length"], seed=0, first_chunk=0, service=service,
        shuffle_buffer=RENDER_SHUFFLE_BUFFER,
        augment=writer.style_from_info(info).augment if augmented else None,
        alphabet=info["alphabet"])
    return {"examples_per_s": _pipeline_rate(_normalized(dataset), examples, repeats)}


def _two_pipelines(first, second) -> tuple[dict, dict]:
    """first = (function, *args), then second, in this process: pipelines whose memory is not
    reported share a process (a TensorFlow start each is seconds of the stage)."""
    return first[0](*first[1:]), second[0](*second[1:])


def _start_data_service(log_dir: str, role: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts `plate_ocr data_service` on a free port and waits for its "serving" line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = os.path.join(log_dir, f"{role}-{port}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "plate_ocr", "data_service", f"--role={role}",
             f"--port={port}", *args], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=paths.ROOT))
    deadline = time.monotonic() + 120
    while "data_service: " not in open(log_path).read():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"data_service --role={role} did not start: "
                               + open(log_path).read()[-500:])
        time.sleep(0.2)
    return process, port


def service_pipeline_stage(records_dir: str, examples: int, repeats: int,
                           work_dir: str) -> dict[str, float]:
    """Examples/s of the training pipelines through a tf.data service on this machine.

    A dispatcher and one, then two, worker processes (bin/data_service) on loopback; the
    client (input_pipeline.make_service_dataset, distributed_epoch, then the plates rendered
    from the glyph atlas, render_source.make_render_dataset) in a fresh process, ending in
    the same float32 /255 map as the in-process figures. On one machine the workers share the
    cores with the client: this is the service's overhead, not a scale-out figure.

    Args:
      records_dir: the records (train split).
      examples: examples per timed pass.
      repeats: timed passes; each figure is the median.
      work_dir: an existing folder for the servers' logs (removed afterwards).
    Returns:
      {"service_1_worker_examples_per_s", "service_2_workers_examples_per_s",
       "render_service_1_worker_examples_per_s", "render_service_2_workers_examples_per_s"}.
    """
    log_dir = os.path.join(work_dir, "data_service")
    os.makedirs(log_dir)
    servers, figures = [], {}
    try:
        dispatcher, port = _start_data_service(log_dir, "dispatcher",
                                               f"--work_dir={os.path.join(log_dir, 'journal')}")
        servers.append(dispatcher)
        for count, key in ((1, "service_1_worker_examples_per_s"),
                           (2, "service_2_workers_examples_per_s")):
            while len(servers) < 1 + count:
                servers.append(_start_data_service(log_dir, "worker",
                                                   f"--dispatcher=localhost:{port}")[0])
            service = f"grpc://localhost:{port}"
            records_figures, render_figures = run_measured(
                _two_pipelines, (_service_pipeline, records_dir, service, examples, repeats),
                (_render_pipeline, records_dir, service, examples, repeats))[0]
            figures[key] = records_figures["examples_per_s"]
            figures["render_" + key] = render_figures["examples_per_s"]
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait()
        shutil.rmtree(log_dir, ignore_errors=True)
    return figures


def write_png_folder(records_dir: str, png_dir: str, count: int) -> dict:
    """Writes `count` plates of the val split (cycled if it has fewer) as <index>_<text>.png.

    Returns:
      the records' dataset_info.
    """
    from PIL import Image
    from plate_ocr.serving import evaluate
    info = records.read_info(records_dir)
    if not info["splits"].get("val", {}).get("num_examples"):
        raise ValueError(f"{records_dir} has no val plates to write as PNGs")
    os.makedirs(png_dir)
    written = 0
    while written < count:
        for batch in evaluate.read_split(records_dir, "val"):
            for image, text in zip(batch["image"], batch["text"]):
                if written == count:
                    break
                Image.fromarray(image).save(os.path.join(png_dir, f"{written:06d}_{text}.png"))
                written += 1
    return info


def pipeline_stage(records_dir: str, examples: int, png_files: int, repeats: int,
                   work_dir: str) -> tuple[dict[str, float], dict]:
    """Examples/s of our input pipeline and of a folder of PNGs, batch 256, from page cache.

    Ours is input_pipeline.make_dataset on the train split (shuffled, as in training). The
    other reads the val plates the way the original project stored them, one PNG per plate
    (written here first, then read through once so both come from the page cache). Both end
    in the same float32 /255 map, so neither is spared the normalization. Then the training
    plates rendered from the glyph atlas (--source=render), and both training pipelines
    through a local tf.data service (service_pipeline_stage).

    Args:
      records_dir: the records (train split, and val for the PNGs).
      examples: examples per timed pass of our pipeline.
      png_files: PNG files written; each timed pass of the PNG pipeline reads as many, in
        whole batches (at least one).
      repeats: timed passes of each; each figure is the median.
      work_dir: an existing folder for the PNGs (removed afterwards).
    Returns:
      ({figure: value} of FIGURES["pipeline"], {"rss_mb_after_import": of TF and Keras}).
    """
    png_dir = os.path.join(work_dir, "png")
    try:
        info = run_measured(write_png_folder, records_dir, png_dir, png_files)[0]
        ours, ours_rss, baseline = run_measured(_tfrecord_pipeline, records_dir, examples,
                                                repeats)
        png, png_rss, _ = run_measured(_png_pipeline, png_dir, info, max(png_files, BATCH),
                                       repeats)
    finally:
        shutil.rmtree(png_dir, ignore_errors=True)
    render, augmented = run_measured(
        _two_pipelines, (_render_pipeline, records_dir, "", examples, repeats),
        (_render_pipeline, records_dir, "", examples // 4, repeats, True))[0]
    service = service_pipeline_stage(records_dir, examples, repeats, work_dir)
    figures = {**ours, **png, "render_examples_per_s": render["examples_per_s"],
               "render_augmented_examples_per_s": augmented["examples_per_s"],
               "render_over_service_1_worker": render["examples_per_s"]
               / service["render_service_1_worker_examples_per_s"], "tfrecord_over_png": ours["tfrecord_examples_per_s"]
               / png["png_examples_per_s"], "tfrecord_peak_rss_mb": ours_rss,
               "png_peak_rss_mb": png_rss, **service,
               "tfrecord_over_service_1_worker": ours["tfrecord_examples_per_s"]
               / service["service_1_worker_examples_per_s"]}
    return figures, {"rss_mb_after_import": baseline}
