"""Build real catalogs and image stores for the label stage's tests."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from deepselfie.catalog import Catalog, FaceRecord, FaceScan, MediaRecord, PostRecord

FETCHED = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


@dataclass
class Spec:
    """One post for a test catalog."""

    uri: str
    author: str
    followers: int
    likes: int
    tags: list = field(default_factory=list)
    age_days: float = 60
    faces: int | None = 1            # None: no face scan row
    image: int | None = 0            # image seed; None: no downloaded image
    size: tuple = (30, 24)           # width, height of the image
    fmt: str = "PNG"


def image_bytes(seed: int, size=(30, 24), fmt="PNG") -> bytes:
    """A distinct, smooth-ish test image (so JPEG keeps it recognisable)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(3,))
    yy, xx = np.mgrid[0:h, 0:w]
    img = (base[None, None, :] + 4 * xx[:, :, None] + 3 * yy[:, :, None]
           + rng.integers(0, 40, size=(h, w, 3))) % 256
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def store_image(cat: Catalog, data_dir, data: bytes, fmt: str) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    rel = f"images/{sha[:2]}/{sha}.{ext}"
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    cat.add_image(sha, rel, w, h, len(data), fmt)
    return sha, rel


def make_catalog(data_dir, specs) -> dict:
    """Write specs into <data_dir>/catalog.sqlite and images/; return {uri: image path}."""
    paths = {}
    with Catalog(data_dir / "catalog.sqlite") as cat:
        for s in specs:
            created = FETCHED - dt.timedelta(days=s.age_days)
            post = PostRecord(uri=s.uri, author=s.author, followers=s.followers, likes=s.likes,
                              created_at=created.isoformat(), fetched_at=FETCHED.isoformat(),
                              server="https://example.org", tags=list(s.tags),
                              media=[MediaRecord(f"https://example.org/m/{s.uri[-6:]}.img")])
            post_id, _ = cat.upsert_post(post)
            if s.image is None:
                continue
            ((media_id, _),) = cat.pending_downloads(post_ids=[post_id])
            sha, rel = store_image(cat, data_dir, image_bytes(s.image, s.size, s.fmt), s.fmt)
            cat.record_download(media_id, "ok", sha256=sha)
            if s.faces is not None:
                face = FaceRecord((0, 0, 8, 8), 0.9)
                cat.record_face_scans([FaceScan(sha, (face,) * s.faces, None)], "test")
            paths[s.uri] = rel
    return paths


def lmdb_items(path) -> list:
    """Every (key, value) of an LMDB, in key order."""
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()
