"""Stage 1: collect #selfie posts into the SQLite catalog and the content-addressed image store."""
