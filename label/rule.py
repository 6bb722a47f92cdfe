"""The article's rule: like rank among posts with a similar audience.

audience = followers x (1 + tag_bonus x number of tags). Eligible posts are sorted by audience,
largest first (ties by uri), and cut into consecutive groups of ``group_size``; a last group
smaller than that is left out. Within a group posts are sorted by likes, most first (ties by uri):
the first half is labeled 1 (good), the second half 0 (bad). Group and rank count from 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from .posts import Post

GOOD, BAD = 1, 0


@dataclass(frozen=True)
class Labeled:
    post: Post
    audience: float
    group: int          # 0 = the largest audiences
    rank: int           # 0 = the most liked in its group
    label: int          # 1 good, 0 bad


def audience(followers: int, n_tags: int, tag_bonus: float) -> float:
    return followers * (1.0 + tag_bonus * n_tags)


def label_posts(posts, group_size: int, tag_bonus: float) -> list[Labeled]:
    """Label eligible posts; the result is ordered by group, then rank."""
    if group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even number >= 2, not {group_size}")
    scored = sorted(((audience(p.followers, p.n_tags, tag_bonus), p) for p in posts),
                    key=lambda ap: (-ap[0], ap[1].uri))
    out = []
    for group in range(len(scored) // group_size):
        members = scored[group * group_size:(group + 1) * group_size]
        members.sort(key=lambda ap: (-ap[1].likes, ap[1].uri))
        for rank, (aud, post) in enumerate(members):
            out.append(Labeled(post, aud, group, rank, GOOD if rank < group_size // 2 else BAD))
    return out
