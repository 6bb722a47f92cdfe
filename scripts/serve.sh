#!/usr/bin/env bash
# Past the article: the web page that scores your selfie (and its JSON API) on 127.0.0.1:8000.
# Every deepselfie option passes through, e.g.
#   scripts/serve.sh --weights W --reference test_scores.csv
set -euo pipefail
exec "${PYTHON:-python3}" -m deepselfie serve "$@"
