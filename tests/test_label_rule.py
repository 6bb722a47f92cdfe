"""The article's rule, eligibility and author splits as pure functions (hypothesis properties)."""
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from label.posts import Post, Rules, select_eligible, why_not
from label.rule import audience, label_posts
from label.splits import SPLITS, split_authors, split_rows


def _post(i, author="a", followers=100, likes=0, tags=(), **kw):
    return Post(i, f"https://x.example/p/{i:04d}", author, followers, likes, tuple(tags), **kw)


def test_audience_is_followers_times_tag_bonus():
    assert audience(200, 3, 0.5) == 200 * 2.5
    assert audience(200, 0, 0.5) == 200


def test_a_small_case_by_hand():
    # audiences: p0 100, p1 150, p2 100, p3 40, p4 300, p5 10
    posts = [_post(0, followers=100, likes=5), _post(1, followers=100, likes=1, tags=["a"]),
             _post(2, followers=50, likes=9, tags=["a", "b"]), _post(3, followers=40, likes=2),
             _post(4, followers=300, likes=0), _post(5, followers=10, likes=50)]
    out = label_posts(posts, group_size=2, tag_bonus=0.5)
    got = [(item.post.post_id, item.group, item.rank, item.label) for item in out]
    # groups by audience: [p4 300, p1 150], [p0 100, p2 100 (tie: uri)], [p3 40, p5 10]
    assert got == [(1, 0, 0, 1), (4, 0, 1, 0),
                   (2, 1, 0, 1), (0, 1, 1, 0),
                   (5, 2, 0, 1), (3, 2, 1, 0)]


def test_final_short_group_is_left_out_and_ties_break_by_uri():
    posts = [_post(i, followers=100, likes=7) for i in range(7)]
    out = label_posts(posts, group_size=4, tag_bonus=0.0)
    assert [item.post.post_id for item in out] == [0, 1, 2, 3]
    assert [item.label for item in out] == [1, 1, 0, 0]


@pytest.mark.parametrize("size", [0, 1, 3, 7])
def test_group_size_must_be_even(size):
    with pytest.raises(ValueError):
        label_posts([], size, 0.1)


posts_strategy = st.lists(
    st.tuples(st.integers(0, 9),            # author
              st.integers(0, 2000),         # followers
              st.integers(0, 60),           # likes
              st.integers(0, 4)),           # number of tags
    min_size=0, max_size=80)


def _posts(raw):
    return [_post(i, author=f"u{a}", followers=f, likes=l, tags=[f"t{k}" for k in range(n)])
            for i, (a, f, l, n) in enumerate(raw)]


@settings(max_examples=150, deadline=None)
@given(posts_strategy, st.sampled_from([2, 4, 6, 10]), st.sampled_from([0.0, 0.05, 0.5]))
def test_every_full_group_is_half_good_half_bad(raw, group_size, bonus):
    posts = _posts(raw)
    out = label_posts(posts, group_size, bonus)
    assert len(out) == len(posts) // group_size * group_size
    groups = defaultdict(list)
    for item in out:
        groups[item.group].append(item)
    for members in groups.values():
        assert len(members) == group_size
        assert Counter(m.label for m in members) == {1: group_size // 2, 0: group_size // 2}
        assert [m.rank for m in members] == list(range(group_size))
        good = [m.post.likes for m in members if m.label == 1]
        bad = [m.post.likes for m in members if m.label == 0]
        assert min(good) >= max(bad)
    # groups are consecutive in audience: nothing in group g+1 outranks anything in group g
    for g in range(len(groups) - 1):
        assert min(m.audience for m in groups[g]) >= max(m.audience for m in groups[g + 1])
    # what is left out has no larger audience than the last group
    if groups:
        labeled = {m.post.post_id for m in out}
        rest = [audience(p.followers, p.n_tags, bonus) for p in posts
                if p.post_id not in labeled]
        assert all(a <= min(m.audience for m in groups[len(groups) - 1]) for a in rest)


@settings(max_examples=100, deadline=None)
@given(posts_strategy, st.randoms(use_true_random=False))
def test_rerunning_on_the_same_posts_in_any_order_gives_the_same_labels(raw, rnd):
    posts = _posts(raw)
    shuffled = list(posts)
    rnd.shuffle(shuffled)
    assert label_posts(posts, 4, 0.05) == label_posts(shuffled, 4, 0.05)
    rows = split_rows(label_posts(posts, 4, 0.05), (0.6, 0.2, 0.2), seed=3)
    again = split_rows(label_posts(shuffled, 4, 0.05), (0.6, 0.2, 0.2), seed=3)
    assert rows == again


ratios_strategy = st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (1.0, 0.0, 0.0),
                                   (0.6, 0.4, 0.0), (0.34, 0.33, 0.33)])


@settings(max_examples=150, deadline=None)
@given(posts_strategy, ratios_strategy, st.integers(0, 5))
def test_no_author_crosses_splits_and_shares_follow_the_ratios(raw, ratios, seed):
    labeled = label_posts(_posts(raw), 2, 0.05)
    rows = split_rows(labeled, ratios, seed)
    split_of_author = defaultdict(set)
    for item, split in rows:
        assert split in SPLITS
        split_of_author[item.post.author].add(split)
    assert all(len(s) == 1 for s in split_of_author.values())
    for split, ratio in zip(SPLITS, ratios):
        if ratio == 0:
            assert all(s != split for _, s in rows)
    if rows:
        # each share is within one author's worth of posts of its ratio
        biggest = max(Counter(item.post.author for item, _ in rows).values())
        n = len(rows)
        for split, ratio in zip(SPLITS, ratios):
            share = sum(s == split for _, s in rows)
            assert abs(share - ratio * n) <= biggest + 1e-9


def test_split_is_deterministic_from_the_seed_and_moves_with_it():
    authors = {f"user{i}": 1 for i in range(200)}
    a = split_authors(authors, (0.8, 0.1, 0.1), seed=0)
    assert a == split_authors(dict(reversed(list(authors.items()))), (0.8, 0.1, 0.1), seed=0)
    b = split_authors(authors, (0.8, 0.1, 0.1), seed=1)
    assert a != b
    assert Counter(a.values()) == {"train": 160, "val": 20, "test": 20}


def test_eligibility_reasons_in_order():
    rules = Rules(min_age_days=30, min_followers=10, max_followers=1000, max_tags=2, min_faces=1)
    ok = dict(created_at="2026-01-01T00:00:00+00:00", fetched_at="2026-02-15T00:00:00+00:00",
              sha256="ab", path="images/ab/ab.png", n_faces=1)
    assert why_not(_post(0, **ok), rules) is None
    assert why_not(_post(0, **{**ok, "sha256": None}), rules) == "no image"
    assert why_not(_post(0, **{**ok, "fetched_at": "2026-01-30T23:59:59+00:00"}),
                   rules) == "too recent"
    assert why_not(_post(0, **{**ok, "fetched_at": "2026-01-31T00:00:00+00:00"}), rules) is None
    assert why_not(_post(0, followers=9, **ok), rules) == "followers out of range"
    assert why_not(_post(0, followers=1001, **ok), rules) == "followers out of range"
    assert why_not(_post(0, followers=1000, **ok), rules) is None
    assert why_not(_post(0, tags=["a", "b", "c"], **ok), rules) == "too many tags"
    assert why_not(_post(0, **{**ok, "n_faces": None}), rules) == "not face-scanned"
    assert why_not(_post(0, **{**ok, "n_faces": 0}), rules) == "too few faces"
    no_faces = Rules(min_age_days=30, min_followers=10, max_followers=1000, max_tags=2,
                     min_faces=0)
    assert why_not(_post(0, **{**ok, "n_faces": None}), no_faces) is None


def test_a_shared_image_is_labeled_once_for_the_earliest_post():
    fetched = "2026-03-01T00:00:00+00:00"
    early = _post(1, author="a", sha256="s1", created_at="2026-01-01T00:00:00+00:00",
                  fetched_at=fetched)
    late = _post(0, author="b", sha256="s1", created_at="2026-01-05T00:00:00+00:00",
                 fetched_at=fetched)
    other = _post(2, author="c", sha256="s2")
    kept, excluded = select_eligible([late, other, early], Rules())
    assert kept == [early, other]
    assert excluded == {"duplicate image": 1}

