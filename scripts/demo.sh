#!/usr/bin/env bash
# The main job end to end on an embedded default corpus, on this CPU, in a few minutes:
# scrape (an embedded Mastodon-API server on 127.0.0.1) -> faces -> label -> train the small net
# -> score a held-out folder -> report. The engagement in the demo corpus is synthetic.
#
#   scripts/demo.sh [--data-dir DIR] [--quick]        (default DIR: data/demo)
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q torch==2.13.0
fi
if ! python3 -c "import deepselfie, lmdb, skimage, sklearn" 2>/dev/null; then
  python3 -m pip install -q -e .
fi
exec python3 -m deepselfie demo "$@"
