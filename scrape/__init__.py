"""Stage 1: collect #selfie posts into the SQLite catalog and the content-addressed image store.

The entry point is ``scrape.stage.run_scrape(cfg, ...)`` (the CLI in deepselfie/cli/scrape.py,
scripts/scrape.sh and the demo call it); posts and downloads go into the shared catalog
(deepselfie.catalog). The parts, one concept per module:

  mastodon    a Mastodon-API status -> PostRecord, or the reason to skip it (opt-outs included)
  timeline    paging one hashtag timeline from a saved cursor (Link header or max_id)
  fetch       GET over http(s): retries, backoff, 429s, redirects, byte limits
  pacing      per-host pacing from X-RateLimit-* headers
  images      decode before keep; the images/<aa>/<sha256>.<ext> store
  downloader  the download threads, recording each outcome
  folder      the folder source (your images + a metadata CSV)
  counters    the names of what a run counts (its summary's keys)
"""
