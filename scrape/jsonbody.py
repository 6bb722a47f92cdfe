"""JSON from a server we do not trust: the nesting depth is bounded before parsing.

``json.loads`` recurses once per ``[`` or ``{``; a body nested 100 000 deep ends in a
RecursionError (and anything walking the result recursively would too). A Mastodon status is a
few levels deep (status > reblog > account > fields > field), so a page deeper than
``MAX_DEPTH`` is refused with a reason, before it is parsed.
"""
from __future__ import annotations

import json
import re

import numpy as np

MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class BadJSON(ValueError):
    """The body is not JSON we accept; str() is the reason, a few words."""


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of [ and { in ``body`` (brackets inside strings do not count)."""
    brackets = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    step = (np.isin(brackets, (0x5B, 0x7B)).astype(np.int32)
            - np.isin(brackets, (0x5D, 0x7D)).astype(np.int32))
    return int(np.cumsum(step).max(initial=0))


def loads(body: bytes, max_depth: int = MAX_DEPTH):
    """Parse ``body`` -> the value; BadJSON(reason) when it is not JSON or nested too deep."""
    depth = nesting_depth(body)
    if depth > max_depth:
        raise BadJSON(f"JSON nested {depth} deep (more than {max_depth})")
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise BadJSON(f"malformed JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadJSON(f"malformed JSON ({str(e)[:60]})") from None
