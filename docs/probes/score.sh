#!/usr/bin/env bash
# Score a plate_ocr model on the probe folders: one line per probe, its name and bin/predict's accuracy line.
# usage: bash /tmp/probes/score.sh MODEL_DIR [PROBE...]   (default probes: trdg1k hershey mpl pilstyle)
# MODEL_DIR is what bin/predict --model takes (a run dir with export/, the SavedModel, a .keras or .tflite).
# Each probe's per-image readings (path, reading, confidence) go to /tmp/probes/results/<model>__<probe>.txt.
set -u
model="${1:?usage: bash /tmp/probes/score.sh MODEL_DIR [PROBE...]}"
shift
model="$(readlink -f "$model")"
probes=("$@")
[ ${#probes[@]} -gt 0 ] || probes=(trdg1k hershey mpl pilstyle)
results=/tmp/probes/results
mkdir -p "$results"
tag="$(echo "${model#/}" | tr '/' '_')"
cd /work/main || exit 1
status=0
for name in "${probes[@]}"; do
  out="$results/${tag}__${name}.txt"
  # a folder argument: bin/predict lists its images itself (no shell glob, no argument-length limit)
  nice -n 10 bin/predict --model "$model" --labels_from_filenames --min_confidence 0 \
    "/tmp/probes/$name" > "$out" 2> "$out.err" || status=1
  line="$(grep '^accuracy:' "$out" | tail -1)"
  [ -n "$line" ] || line="no accuracy line (see $out.err)"
  printf '%-9s %s\n' "$name" "$line"
done
exit $status
