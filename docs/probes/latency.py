"""TFLite models side by side: one plate per invoke, models alternating, median ms per run.

usage: .venv/bin/python docs/probes/latency.py RECORDS_DIR MODEL.tflite [MODEL.tflite ...]
environment: THREADS (interpreter threads, 1), RUNS (alternating runs, 8), SPLIT (test).
Reads the split's first 256 plates one at a time (set_tensor and invoke, no decoding in
Python: the interpreter's time), each model in turn, RUNS times; prints each model's median
of the runs' medians and the runs' range. bin/benchmark --stages=inference measures the same
through evaluate.load_predictor, one model after the other.
"""
import os
import sys
import time

import numpy as np
import tensorflow as tf

from plate_ocr.serving import evaluate

records_dir, paths = sys.argv[1], sys.argv[2:]
plates = next(evaluate.read_split(records_dir, os.environ.get("SPLIT", "test"), 256))["image"]
runners = {}
for path in paths:
    interpreter = tf.lite.Interpreter(model_path=path,
                                      num_threads=int(os.environ.get("THREADS", 1)))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [1, *plates.shape[1:]])
    interpreter.allocate_tensors()

    def run(i, interpreter=interpreter, index=index):
        interpreter.set_tensor(index, plates[i:i + 1])
        interpreter.invoke()
    run(0)
    runners[path] = run
medians = {path: [] for path in paths}
for _ in range(int(os.environ.get("RUNS", 8))):
    for path, run in runners.items():
        times = []
        for i in range(len(plates)):
            started = time.perf_counter()
            run(i)
            times.append(time.perf_counter() - started)
        medians[path].append(1000 * np.median(times))
for path in paths:
    runs = np.array(medians[path])
    print(f"{path}: median {np.median(runs):.3f} ms a plate (runs {runs.min():.3f}-{runs.max():.3f})")
