#!/usr/bin/env bash
# Stage 3: label eligible posts by like rank, split by author, write the Caffe LMDBs and the mean.
# Every deepselfie option passes through, e.g.
#   scripts/label.sh --data-dir data --set label.group_size=50 --set label.encoding=raw
set -euo pipefail
exec "${PYTHON:-python3}" -m deepselfie label "$@"
