#!/usr/bin/env bash
# Stage 2: find the faces in every downloaded image of the catalog (MTCNN on the Caffe runtime).
# The MTCNN weights are downloaded (facenet-pytorch wheel, pinned) and converted on first use.
#   bash scripts/faces.sh                         # scan images not scanned yet
#   bash scripts/faces.sh --rescan                # scan every image again
#   bash scripts/faces.sh --image me.jpg --json   # one photo
#   bash scripts/faces.sh --fetch-weights         # only download and convert the weights
# Extra arguments go to `deepselfie faces` (e.g. --data-dir DIR, --set faces.min_face_size=40).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m deepselfie faces "$@"
