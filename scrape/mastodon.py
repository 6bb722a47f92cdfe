"""A Mastodon-API status (Mastodon, Pixelfed, ...) -> a PostRecord, or the reason to skip it.

Real servers leave fields out or send null, so every field is read defensively:
- identity: ``uri`` (the same on every server; ``url`` when uri is missing);
- author: ``account.acct`` qualified with a domain (local accounts come without one),
  ``account.followers_count``;
- counts: ``favourites_count`` (likes), ``reblogs_count``; ``tags[].name``; ``created_at``;
  ``sensitive``; a reblog wrapper is unwrapped to the original post;
- media: every attachment is recorded; only ``type: image`` is downloaded (``unknown`` too when
  its url looks like an image: remote media the server has not cached), using ``url`` and else
  ``remote_url``; ``meta.original.width/height`` (or ``size`` "WxH") as the claimed size.

Opt-outs honored (the post is skipped, and the reason counted): ``account.indexable: false``,
``account.noindex: true``, ``#nobot`` or ``#noindex`` in the bio or profile fields, in the post's
tags or text; posts that are not public; suspended accounts.
"""
from __future__ import annotations

import html
import re
import urllib.parse
from dataclasses import dataclass

from deepselfie.catalog import MediaRecord, PostRecord, host_of, to_iso
from .counts import parse_count

OPT_OUT_TAGS = ("nobot", "noindex")
_OPT_OUT = re.compile(r"#(nobot|noindex)\b", re.IGNORECASE)
_BREAK = re.compile(r"<\s*/?\s*(p|br|div|li|ul|ol|h\d)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_IMAGE_PATH = re.compile(r"\.(jpe?g|png|webp|gif)$", re.IGNORECASE)


@dataclass
class Skip:
    """Why a status is not kept: 'opted out (noindex)', 'incomplete status (no uri)', ...

    ``opted_out`` names the author when the author (not just the post) opted out."""

    reason: str
    opted_out: str | None = None


def _text(html_text) -> str:
    """Visible text of an HTML fragment (a bio, a post)."""
    if not isinstance(html_text, str):
        return ""
    return html.unescape(_TAG.sub("", _BREAK.sub(" ", html_text)))


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def qualified_acct(account: dict, server: str) -> str | None:
    """``alice`` (local) -> ``alice@host``; ``bob@other.example`` stays; None when missing."""
    acct = account.get("acct") or account.get("username")
    if not isinstance(acct, str) or not acct.strip("@ "):
        return None
    acct = acct.strip().lstrip("@")
    if "@" in acct:
        return acct
    domain = host_of(account.get("url") if isinstance(account.get("url"), str) else None)
    return f"{acct}@{domain or host_of(server)}"


def opt_out_reason(status: dict, account: dict) -> str | None:
    """Why the author or the post asks not to be collected; None when they do not."""
    if account.get("indexable") is False:
        return "opted out (indexable: false)"
    if account.get("noindex") is True:
        return "opted out (noindex: true)"
    if account.get("suspended") is True:
        return "account suspended"
    bio = _text(account.get("note")) + " " + " ".join(
        _text(f.get("value")) + " " + _text(f.get("name"))
        for f in _list(account.get("fields")) if isinstance(f, dict))
    m = _OPT_OUT.search(bio)
    if m:
        return f"opted out (#{m[1].lower()} in bio)"
    names = {str(t.get("name", "")).lower() for t in _list(status.get("tags"))
             if isinstance(t, dict)}
    for tag in OPT_OUT_TAGS:
        if tag in names:
            return f"opted out (#{tag} on post)"
    m = _OPT_OUT.search(_text(status.get("content")) + " " + _text(status.get("spoiler_text")))
    if m:
        return f"opted out (#{m[1].lower()} on post)"
    return None


def _size(meta: dict) -> tuple[int | None, int | None]:
    original = _dict(_dict(meta).get("original"))
    w, h = parse_count(original.get("width")), parse_count(original.get("height"))
    if (w is None or h is None) and isinstance(original.get("size"), str):
        m = re.fullmatch(r"\s*([0-9]+)\s*x\s*([0-9]+)\s*", original["size"])
        if m:
            w, h = parse_count(m[1]), parse_count(m[2])
    return w, h


def parse_attachment(a) -> MediaRecord:
    """One media attachment -> MediaRecord; ``skip`` says why it will not be downloaded."""
    if not isinstance(a, dict):
        return MediaRecord(None, kind="unknown", skip="malformed attachment")
    kind = a.get("type") if isinstance(a.get("type"), str) else "unknown"
    url = next((u for u in (a.get("url"), a.get("remote_url")) if isinstance(u, str) and u),
               None)
    w, h = _size(a.get("meta"))
    m = MediaRecord(url, w, h, kind=kind)
    if kind == "unknown" and url and _IMAGE_PATH.search(urllib.parse.urlsplit(url).path):
        pass   # remote media the server did not cache: try it, the decoder will judge
    elif kind != "image":
        m.skip = f"not an image ({kind})"
        return m
    if not url:
        m.skip = "no media url"
    elif urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        m.skip = "media url is not http(s)"
    return m


def parse_status(status, *, server: str, fetched_at: str) -> PostRecord | Skip:
    """A status as a tag timeline returns it -> PostRecord, or Skip(reason)."""
    if not isinstance(status, dict):
        return Skip("malformed status (not an object)")
    if isinstance(status.get("reblog"), dict):
        status = status["reblog"]
    visibility = status.get("visibility")
    if visibility not in (None, "public"):
        return Skip(f"not public ({visibility})")
    account = _dict(status.get("account"))
    if not account:
        return Skip("incomplete status (no account)")
    reason = opt_out_reason(status, account)
    if reason:
        whole_account = "on post" not in reason
        return Skip(reason, qualified_acct(account, server) if whole_account else None)

    uri = next((u for u in (status.get("uri"), status.get("url")) if isinstance(u, str) and u),
               None)
    author = qualified_acct(account, server)
    followers = parse_count(account.get("followers_count"))
    likes = parse_count(status.get("favourites_count"))
    for value, name in ((uri, "uri"), (author, "account.acct"),
                        (followers, "account.followers_count"), (likes, "favourites_count")):
        if value is None:
            return Skip(f"incomplete status (no {name})")
    try:
        created_at = to_iso(status.get("created_at"))
    except (TypeError, ValueError):
        return Skip("incomplete status (no created_at)")

    tags = []
    for t in _list(status.get("tags")):
        name = t.get("name") if isinstance(t, dict) else None
        if isinstance(name, str) and name.strip() and name.strip().lower() not in tags:
            tags.append(name.strip().lower())
    status_id = status.get("id")
    return PostRecord(
        uri=uri, author=author, followers=followers, likes=likes, created_at=created_at,
        fetched_at=fetched_at, server=server, tags=tags,
        reblogs=parse_count(status.get("reblogs_count")) or 0,
        sensitive=status.get("sensitive") is True,
        status_id=str(status_id) if isinstance(status_id, (str, int)) else None,
        url=status.get("url") if isinstance(status.get("url"), str) else None,
        source="mastodon",
        media=[parse_attachment(a) for a in _list(status.get("media_attachments"))])


def home_status_api(uri: str) -> str | None:
    """Where the post's home server serves it as an API status, when the uri's form says so.

    Mastodon: https://host/users/<name>/statuses/<id>; Pixelfed: https://host/p/<name>/<id>.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    m = (re.fullmatch(r"/users/[^/]+/statuses/(\w+)/?", parts.path)
         or re.fullmatch(r"/p/[^/]+/(\w+)/?", parts.path))
    if not m:
        return None
    return f"{parts.scheme}://{parts.netloc}/api/v1/statuses/{m[1]}"
