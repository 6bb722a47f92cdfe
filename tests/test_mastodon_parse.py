"""Statuses as real servers send them -> PostRecord, or the reason to skip; never an exception."""
import copy
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepselfie.catalog import to_iso
from scrape.mastodon import Skip, home_status_api, parse_attachment, parse_status

DATA = pathlib.Path(__file__).parent / "data"
NOW = "2024-11-29T00:00:00+00:00"


def load(name):
    return json.loads((DATA / name).read_text())


def test_a_mastodon_tag_timeline():
    first, second, third = load("mastodon_tag_timeline.json")
    p = parse_status(first, server="https://big.example", fetched_at=NOW)
    assert p.uri == "https://photog.example/users/mira/statuses/113558214998765432"
    assert (p.author, p.followers, p.likes, p.reblogs) == ("mira@photog.example", 1842, 31, 4)
    assert p.tags == ["selfie", "portrait"] and p.created_at == "2024-11-28T19:04:11+00:00"
    assert p.server == "https://big.example" and p.status_id == "113558215034567890"
    img, clip = p.media
    assert (img.kind, img.width, img.height, img.skip) == ("image", 1536, 2048, None)
    assert img.url.endswith("/original/9f8e7d.jpg")
    assert (clip.kind, clip.skip) == ("gifv", "not an image (gifv)")

    p = parse_status(second, server="https://big.example", fetched_at=NOW)
    assert p.author == "tom_k@big.example" and p.sensitive and p.likes == 0
    assert p.tags == ["selfie", "me"]
    png, uncached = p.media
    assert (png.width, png.height, png.skip) == (1170, 1560, None)
    # remote media the server did not cache: type unknown, url null, an image remote_url
    assert uncached.url == "https://tiny.example/uploads/2024/11/second.jpeg"
    assert uncached.skip is None and uncached.width is None

    assert parse_status(third, server="https://big.example", fetched_at=NOW) == \
        Skip("opted out (indexable: false)", opted_out="ana@quiet.example")


def test_a_pixelfed_tag_timeline():
    first, second = load("pixelfed_tag_timeline.json")
    p = parse_status(first, server="https://pix.example", fetched_at=NOW)
    assert (p.author, p.followers, p.likes) == ("lens_lover@pix.example", 2311, 57)
    assert p.created_at == "2024-11-24T09:12:33+00:00" and p.tags == ["selfie"]
    (m,) = p.media
    assert m.url.endswith("/photo.jpg") and (m.width, m.height, m.skip) == (None, None, None)
    assert parse_status(second, server="https://pix.example", fetched_at=NOW) == \
        Skip("opted out (#noindex on post)")     # the post only, not the author


def _status(**changes):
    """The second sample status with changes: account__noindex=True sets s["account"]["noindex"];
    a value of ... deletes the key."""
    s = copy.deepcopy(load("mastodon_tag_timeline.json")[1])
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = s
        for k in parents:
            target = target[k]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return s


@pytest.mark.parametrize("changes,reason", [
    ({"account__noindex": True}, "opted out (noindex: true)"),
    ({"account__indexable": False}, "opted out (indexable: false)"),
    ({"account__note": "<p>no bots please #NoBot</p>"}, "opted out (#nobot in bio)"),
    ({"account__fields": [{"name": "x", "value": "#noindex"}]}, "opted out (#noindex in bio)"),
    ({"content": "<p>hi #nobot</p>"}, "opted out (#nobot on post)"),
    ({"visibility": "unlisted"}, "not public (unlisted)"),
    ({"account": None}, "incomplete status (no account)"),
    ({"uri": None, "url": None}, "incomplete status (no uri)"),
    ({"account__followers_count": None}, "incomplete status (no account.followers_count)"),
    ({"account__followers_count": -1}, "incomplete status (no account.followers_count)"),
    ({"favourites_count": ...}, "incomplete status (no favourites_count)"),
    ({"created_at": "yesterday"}, "incomplete status (no created_at)"),
    ({"account__acct": None, "account__username": None},
     "incomplete status (no account.acct)"),
])
def test_skips_say_why(changes, reason):
    skip = parse_status(_status(**changes), server="https://big.example", fetched_at=NOW)
    assert isinstance(skip, Skip) and skip.reason == reason
    whole_account = reason.startswith("opted out") and "on post" not in reason
    assert skip.opted_out == ("tom_k@big.example" if whole_account else None)


def test_missing_optional_fields_are_fine():
    s = _status(tags=None, media_attachments=None, reblogs_count=None, sensitive=None,
                id=None, account__indexable=..., account__noindex=...)
    p = parse_status(s, server="https://big.example", fetched_at=NOW)
    assert p.tags == [] and p.media == [] and p.reblogs == 0 and not p.sensitive
    assert p.status_id is None


def test_a_reblog_is_the_original_post():
    inner = load("mastodon_tag_timeline.json")[0]
    outer = _status(reblog=inner)
    p = parse_status(outer, server="https://big.example", fetched_at=NOW)
    assert p.uri == inner["uri"] and p.author == "mira@photog.example"


@pytest.mark.parametrize("attachment,expected", [
    ({"type": "image", "url": None, "remote_url": None}, (None, "no media url")),
    ({"type": "image", "url": "ftp://x.example/a.jpg"}, ("ftp://x.example/a.jpg",
                                                         "media url is not http(s)")),
    ({"type": "video", "url": "https://x.example/a.mp4"}, ("https://x.example/a.mp4",
                                                           "not an image (video)")),
    ({"type": "audio", "url": "https://x.example/a.mp3"}, ("https://x.example/a.mp3",
                                                           "not an image (audio)")),
    ({"type": "unknown", "url": None, "remote_url": "https://x.example/a.mp4"},
     ("https://x.example/a.mp4", "not an image (unknown)")),
    ({"url": "https://x.example/a.jpg"}, ("https://x.example/a.jpg", None)),  # no type: try
    ({"type": "image", "url": "https://x.example/a", "meta": {"original": {"size": "10x20"}}},
     ("https://x.example/a", None)),
    ("not a dict", (None, "malformed attachment")),
])
def test_attachments(attachment, expected):
    m = parse_attachment(attachment)
    assert (m.url, m.skip) == expected
    if isinstance(attachment, dict) and attachment.get("meta"):
        assert (m.width, m.height) == (10, 20)


def test_home_status_api():
    assert home_status_api("https://a.example/users/bo/statuses/123") == \
        "https://a.example/api/v1/statuses/123"
    assert home_status_api("https://pix.example/p/lens/7865") == \
        "https://pix.example/api/v1/statuses/7865"
    assert home_status_api("https://misskey.example/notes/9abc") is None
    assert home_status_api("tag:example.org,2011:status/1") is None


@pytest.mark.parametrize("text,iso", [
    ("2019-12-08T03:48:33.901Z", "2019-12-08T03:48:33+00:00"),
    ("2024-11-24T09:12:33.000000Z", "2024-11-24T09:12:33+00:00"),
    ("2024-11-24T11:12:33+02:00", "2024-11-24T09:12:33+00:00"),
    ("2024-11-24", "2024-11-24T00:00:00+00:00"),
    ("2024-11-24T09:12:33.1234567Z", "2024-11-24T09:12:33+00:00"),
])
def test_server_timestamps(text, iso):
    assert to_iso(text) == iso


@pytest.mark.parametrize("text", ["yesterday", "0001-01-01T00:00:00+05:00", "", "2024-13-01"])
def test_bad_timestamps_are_value_errors(text):
    with pytest.raises(ValueError):
        to_iso(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3), max_leaves=8)
FIELDS = ["id", "uri", "url", "created_at", "account", "favourites_count", "reblogs_count",
          "tags", "media_attachments", "sensitive", "visibility", "reblog", "content"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS + ["account.acct", "account.followers_count",
                                                    "account.note", "account.indexable",
                                                    "account.url"]), json_values),
                max_size=6))
def test_any_mangled_status_parses_or_is_skipped(mutations):
    s = load("mastodon_tag_timeline.json")[0]
    for path, value in mutations:
        if path.startswith("account.") and isinstance(s.get("account"), dict):
            s["account"][path.split(".", 1)[1]] = value
        else:
            s[path] = value
    out = parse_status(s, server="https://big.example", fetched_at=NOW)
    assert isinstance(out, Skip) or (out.uri and out.author and out.followers >= 0)
