"""deepselfie.embed: JSON that is safe inside an HTML <script> element."""
import json

from deepselfie.embed import json_for_html


def test_markup_characters_are_escaped_and_the_value_survives():
    value = {"<!--<script>": ["</script>", "a & b > c", "\u2028\u2029", "é", 3, None]}
    text = json_for_html(value)
    for c in "<>&\u2028\u2029":
        assert c not in text
    assert "\\u003c!--\\u003cscript\\u003e" in text
    assert json.loads(text) == value
