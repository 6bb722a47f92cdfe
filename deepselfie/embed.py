"""JSON inside an HTML page: the one way every page we write embeds data for its script.

``json.dumps`` leaves ``<``, ``>`` and ``&`` as they are, and inside a <script> element the
HTML parser acts on ``</script``, ``<!--`` (which changes how ``<script`` and ``</script`` are
read) before any JavaScript runs: a file named ``<!--<script>.jpg`` swallowed the rest of a
page. Written as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (and the line separators U+2028 and
U+2029 as escapes too) they mean the same characters to JSON.parse and a JavaScript literal,
and nothing to the HTML parser.
"""
from __future__ import annotations

import json

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
            "\u2029": "\\u2029"}
_TABLE = str.maketrans(_ESCAPES)


def json_for_html(value) -> str:
    """``value`` as JSON that is safe inside a <script> element (or an HTML attribute value
    quoted with "... once html-escaped)."""
    return json.dumps(value, ensure_ascii=False).translate(_TABLE)
