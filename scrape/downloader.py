"""Downloading media into the image store on a pool of threads, recording every outcome.

Each media row ends in the catalog as ``ok`` (linked to its image), ``skipped`` (permanent: not
an image, too many pixels, http 404, a redirect to a non-http URL, ...) or ``failed`` (transient:
retries used up on timeouts, resets or 5xx; the next run tries again). The image file is in place
(atomic rename) before its row is committed, so a kill between the two only means the next run
downloads it again and finds the same file.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading

from deepselfie.catalog import Catalog
from deepselfie.tally import Tally

from .counters import IMAGES_FAILED, IMAGES_KEPT, IMAGES_REUSED, IMAGES_SKIPPED
from .fetch import Fetcher, FetchError
from .images import ImageStore, Rejected
from .pacing import Stopped


class Downloader:
    def __init__(self, catalog_path, fetcher: Fetcher, store: ImageStore, *, concurrency: int,
                 max_bytes: int, tally: Tally, bar=None):
        self.catalog_path = catalog_path
        self.fetcher = fetcher
        self.store = store
        self.max_bytes = max_bytes
        self.tally = tally
        self.bar = bar
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency),
                                           thread_name_prefix="download")
        self._futures: list[cf.Future] = []
        self._queued: set[int] = set()
        self._local = threading.local()
        self._catalogs: list[Catalog] = []
        self._lock = threading.Lock()

    def submit(self, items) -> int:
        """Queue (media id, url) pairs not queued yet -> how many were new."""
        n = 0
        for media_id, url in items:
            if media_id in self._queued:
                continue
            self._queued.add(media_id)
            self._futures.append(self._pool.submit(self._download, media_id, url))
            n += 1
        if n and self.bar is not None:
            with self._lock:
                self.bar.total = (self.bar.total or 0) + n
                self.bar.refresh()
        return n

    def note(self, text: str) -> None:
        """Show ``text`` next to the progress bar (what the paging is at)."""
        if self.bar is not None:
            with self._lock:
                self.bar.set_postfix_str(text, refresh=False)

    def finish(self) -> None:
        """Wait for every queued download; re-raise the first unexpected error."""
        try:
            for f in cf.as_completed(self._futures):
                f.result()
        finally:
            self.close()

    def cancel(self) -> None:
        """Stop: drop what has not started (the fetcher's stop event ends what has)."""
        for f in self._futures:
            f.cancel()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for cat in self._catalogs:
            cat.close()
        self._catalogs.clear()

    # ------------------------------------------------------------ one download, on a worker
    def _catalog(self) -> Catalog:
        cat = getattr(self._local, "catalog", None)
        if cat is None:
            cat = self._local.catalog = Catalog(self.catalog_path)
            with self._lock:
                self._catalogs.append(cat)
        return cat

    def _download(self, media_id: int, url: str) -> None:
        cat = self._catalog()
        known = cat.image_for_url(url)
        if known:
            cat.record_download(media_id, "ok", sha256=known, attempts=0)
            self._done(IMAGES_REUSED)
            return
        try:
            resp = self.fetcher.get(url, bucket="media", max_bytes=self.max_bytes)
            image = self.store.keep(resp.body, content_type=resp.content_type)
        except Stopped:
            return
        except FetchError as e:
            status = "skipped" if e.permanent else "failed"
            cat.record_download(media_id, status, e.reason)
            self._done(IMAGES_SKIPPED if e.permanent else IMAGES_FAILED, e.reason)
            return
        except Rejected as e:
            cat.record_download(media_id, "skipped", e.reason)
            self._done(IMAGES_SKIPPED, e.reason)
            return
        cat.keep_image(media_id, image)
        self._done(IMAGES_KEPT)

    def _done(self, what: str, reason: str | None = None) -> None:
        self.tally.add(what, reason)
        if self.bar is not None:
            with self._lock:
                self.bar.update(1)
