"""Which posts can be labeled: the eligibility rules, applied to the posts the catalog reads
(``Catalog.labelable_posts``).

A post is eligible when it has a downloaded image (its first one is used), was online at least
``min_age_days`` between ``created_at`` and ``fetched_at`` (likes have settled), its author had
between ``min_followers`` and ``max_followers`` followers (inclusive), it has at most ``max_tags``
tags, and its image has at least ``min_faces`` faces in the face stage's scan (0 switches the face
requirement off). An image shared by several eligible posts is labeled once, for the earliest post
(so one picture cannot land in two splits).
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from deepselfie.catalog import LabelablePost


# A post as the label stage sees it: the catalog reads them (Catalog.labelable_posts).
Post = LabelablePost


@dataclass(frozen=True)
class Rules:
    """The eligibility thresholds (label.* in config.yaml); the defaults here restrict nothing."""

    min_age_days: float = 0
    min_followers: int = 0
    max_followers: int = 10**12
    max_tags: int = 10**6
    min_faces: int = 0


# Why a post was left out, in the order the checks run (a post counts under its first failure).
REASONS = ("no image", "too recent", "followers out of range", "too many tags", "not face-scanned",
           "too few faces", "duplicate image")


def _time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def why_not(post: Post, rules: Rules) -> str | None:
    """The first rule the post fails (one of REASONS), or None when it is eligible."""
    if post.sha256 is None:
        return "no image"
    if _time(post.fetched_at) - _time(post.created_at) < dt.timedelta(days=rules.min_age_days):
        return "too recent"
    if not rules.min_followers <= post.followers <= rules.max_followers:
        return "followers out of range"
    if post.n_tags > rules.max_tags:
        return "too many tags"
    if rules.min_faces > 0:
        if post.n_faces is None:
            return "not face-scanned"
        if post.n_faces < rules.min_faces:
            return "too few faces"
    return None


def select_eligible(posts, rules: Rules) -> tuple[list[Post], Counter]:
    """The eligible posts (by uri) and a count of the others by reason."""
    excluded = Counter()
    kept = {}
    for post in sorted(posts, key=lambda p: (_time(p.created_at), p.uri)):
        reason = why_not(post, rules)
        if reason is None and post.sha256 in kept:
            reason = "duplicate image"
        if reason:
            excluded[reason] += 1
        else:
            kept[post.sha256] = post
    return sorted(kept.values(), key=lambda p: p.uri), excluded
