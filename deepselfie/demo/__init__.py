"""The demo: the whole pipeline on an embedded, synthetic #selfie corpus (see corpus.py)."""
