#!/usr/bin/env bash
# Stage 4: fine-tune VGG16 from the solver prototxt (Caffe's `caffe train`), starting from the
# published ImageNet weights. Run from the project root after `deepselfie label`:
#   scripts/train.sh                                   # the defaults below
#   scripts/train.sh --solver my_solver.prototxt       # rerun with a new solver
#   scripts/train.sh --snapshot data/snapshots/selfie_vgg16_iter_2000.solverstate   # resume
# Extra options pass through (--gpu 0, --fast, --data-dir ...).
set -euo pipefail
PY="${PYTHON:-python3}"
args=("$@")
has() { for a in "${args[@]}"; do [[ "$a" == "$1" || "$a" == "-${1#--}" ]] && return 0; done; return 1; }
if ! has --solver; then
  args+=(--solver prototxt/selfie_vgg16_solver.prototxt)
fi
if ! has --weights && ! has --snapshot; then
  weights="$("$PY" -m deepselfie config --get paths.models_dir)"
  [[ "$weights" == "null" ]] && weights="$("$PY" -m deepselfie config --get paths.data_dir)/models"
  weights="$weights/VGG_ILSVRC_16_layers.caffemodel"
  [[ -f "$weights" ]] || "$PY" -m deepselfie fetch-weights vgg16
  args+=(--weights "$weights")
fi
exec "$PY" -m deepselfie train "${args[@]}"
