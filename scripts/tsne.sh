#!/usr/bin/env bash
# Past the article: a t-SNE map of the net's fc7 features (a grid image and an interactive page).
# Every deepselfie option passes through, e.g.
#   scripts/tsne.sh photos/ --weights W --out map/
set -euo pipefail
exec "${PYTHON:-python3}" -m deepselfie tsne "$@"
