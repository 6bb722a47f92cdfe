#!/usr/bin/env bash
# Stage 5: rank a folder of images with the fine-tuned net, best first, with pictures:
#   scripts/score.sh photos/ --weights data/snapshots/selfie_vgg16_iter_30000.caffemodel \
#       --out scores.csv --report report/      (the model card beside the weights says the rest)
# Every deepselfie score option passes through.
set -euo pipefail
exec "${PYTHON:-python3}" -m deepselfie score "$@"
