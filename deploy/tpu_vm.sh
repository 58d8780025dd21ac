#!/usr/bin/env bash
# Train on a Cloud TPU VM, the input optionally on a tf.data service of CPU machines.
#   BUCKET=gs://my-bucket deploy/tpu_vm.sh                       # one host (v4-8: 4 chips)
#   BUCKET=gs://my-bucket DATA_SERVICE=grpc://10.0.0.5:5050 deploy/tpu_vm.sh
# The records must be in $BUCKET/tfrecords (bin/make_records --output_dir, then gsutil -m cp -r):
# the TPU host and every data-service worker read them there. The model dir is on the VM's
# disk (the trainer writes config.json and history.json with plain file I/O, not gs://).
# RUNTIME: the tpu-vm-tf-<version>[-pod]-pjrt image of the TensorFlow this project pins
# (`gcloud compute tpus tpu-vm versions list --zone=$ZONE` lists them); not tried from here.
set -euo pipefail
: "${BUCKET:?set BUCKET=gs://<bucket> (records in \$BUCKET/tfrecords)}"
ZONE=${ZONE:-us-central2-b}
TPU=${TPU:-plate-ocr}
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-vm-tf-2.21.0-pjrt}
DATA_SERVICE=${DATA_SERVICE:-}  # grpc://HOST:5050 of a data-service dispatcher, or empty

gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME"
# The project without its venv, installed without an extra: the image's TensorFlow is the one
# that drives the TPU.
git archive --format=tar.gz -o /tmp/plate_ocr.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/plate_ocr.tar.gz "$TPU":~ --zone="$ZONE"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --command="
  set -e; mkdir -p plate_ocr && tar -xzf plate_ocr.tar.gz -C plate_ocr && cd plate_ocr
  pip install --quiet .
  bin/train --flagfile=configs/default.cfg --strategy=tpu --tpu=local \
    --records_dir=$BUCKET/tfrecords --model_dir=\$HOME/runs/tpu \
    --data_service=$DATA_SERVICE --data_timeout=600
"
# A multi-host slice (v4-32...): RUNTIME=tpu-vm-tf-<version>-pod-pjrt, and the same command
# with --tpu="$TPU" run on worker 0 only: TPUStrategy drives every host from there and builds
# one input pipeline per host (each its own data-service job when DATA_SERVICE is set).
