#!/usr/bin/env bash
# Past the article: the best crop of each image (a coarse grid, then refinement around the best).
# Every deepselfie option passes through, e.g.
#   scripts/crop.sh photos/ --weights W --out crops/ --seed 1
set -euo pipefail
exec "${PYTHON:-python3}" -m deepselfie crop "$@"
