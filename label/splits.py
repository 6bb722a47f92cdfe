"""Train/val/test splits by author: every post of an author lands in the same split.

Authors are put in a fixed pseudo-random order (a hash of the seed and the author's name, so the
order does not depend on Python's random module or on which other authors exist), then laid end
to end by their number of labeled posts; an author goes to the split whose share of the line
([0, train), [train, train + val), [train + val, 1]) holds the middle of the author's stretch.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def hash_order(seed: int, name: str) -> str:
    """A stable pseudo-random sort key for name under seed."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def split_authors(posts_per_author: dict, ratios, seed: int) -> dict:
    """author -> "train" | "val" | "test", with shares of posts close to ratios."""
    train, val, _test = ratios
    total = sum(posts_per_author.values())
    out, done = {}, 0
    for author in sorted(posts_per_author, key=lambda a: hash_order(seed, a)):
        n = posts_per_author[author]
        middle = (done + n / 2) / total
        out[author] = "train" if middle < train else "val" if middle < train + val else "test"
        done += n
    return out


def split_rows(labeled, ratios, seed: int) -> list:
    """[(item, split)] for labeled posts (anything with .post.author), in the given order."""
    per_author = {}
    for item in labeled:
        per_author[item.post.author] = per_author.get(item.post.author, 0) + 1
    split_of = split_authors(per_author, ratios, seed)
    return [(item, split_of[item.post.author]) for item in labeled]
