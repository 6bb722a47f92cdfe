#!/usr/bin/env bash
# Stage 1: collect #selfie posts (Mastodon-API hashtag timelines, or a folder of your own images)
# into the catalog and the content-addressed image store under the data dir.
#
#   scripts/scrape.sh --server https://mastodon.social --tag selfie --max-posts 500
#   scripts/scrape.sh --source folder --folder ~/photos --metadata ~/photos/posts.csv
#
# Every option of `deepselfie scrape` works (see --help). Resumable: stop it any time (Ctrl-C, a
# kill, a crash) and run it again; it goes on where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m deepselfie scrape "$@"
