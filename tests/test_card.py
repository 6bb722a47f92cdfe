"""A model card read from anywhere (it travels with the weights): its fields are checked, and a
hostile one (nested past Python's stack, megabytes, wrong types) is one UserError line naming
the file and the field."""
import json

import pytest

from deepselfie.errors import UserError
from models.selfie.card import CARD_VERSION, read_card
from models.selfie.preprocess import AsTrained

GOOD = {"card": CARD_VERSION, "deploy": None, "snapshot_prefix": "/runs/snap",
        "transform": {"scale": 0.5, "crop_size": 24, "mean_file": None,
                      "mean_value": [104.0, 117.0, 123.0]},
        "image_size": [32, 32], "resize_mode": "squash", "encoding": "jpg",
        "jpeg_quality": 95, "seed": 0, "classes": ["bad", "good"]}


def write(tmp_path, card):
    path = tmp_path / "snap_card.json"
    path.write_text(card if isinstance(card, str) else json.dumps(card))
    return path


def test_a_good_card_reads_and_prepares(tmp_path):
    card = read_card(write(tmp_path, GOOD))
    assert card["path"].endswith("snap_card.json")
    pre = AsTrained(card)
    assert (pre.height, pre.width) == (24, 24)


def changed(field, value):
    card = json.loads(json.dumps(GOOD))
    where, _, key = field.rpartition(".")
    holder = card[where] if where else card
    if value is KeyError:
        del holder[key]
    else:
        holder[key] = value
    return card


@pytest.mark.parametrize("field, value, problem", [
    ("transform.scale", KeyError, "missing (it must be a finite number)"),
    ("transform.scale", "x", 'must be a finite number, not "x"'),
    ("transform.crop_size", -3, "must be a whole number from 0 to 65536, not -3"),
    ("transform.crop_size", 1e9, "must be a whole number from 0 to 65536, not 1000000000.0"),
    ("transform.mean_value", [1, 2, 3, 4, 5], "must be a list of at most 4 finite numbers"),
    ("transform.mean_file", {"a": 1}, "must be a path or null"),
    ("image_size", [0, 64], "must be null or [height, width], whole numbers from 1 to 65536"),
    ("image_size", [64, 64, 3], "must be null or [height, width]"),
    ("image_size", [True, 64], "must be null or [height, width]"),
    ("resize_mode", "stretch", "must be one of squash, crop, fill, half_crop"),
    ("encoding", "gif", "must be null or one of jpg, png, raw"),
    ("jpeg_quality", 101, "must be a whole number from 0 to 100, not 101"),
    ("classes", "good", 'must be null or a list of names, not "good"'),
    ("snapshot_prefix", "a\x00b", "must be a path"),
])
def test_bad_fields_are_named(tmp_path, field, value, problem):
    path = write(tmp_path, changed(field, value))
    with pytest.raises(UserError) as e:
        read_card(path)
    assert str(e.value).startswith(f"{path}: {field}: {problem}"), str(e.value)


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, "not a model card (JSON nested too deeply)"),
    ('{"card": 1, "transform": {}, "pad": "' + "x" * (1 << 20) + '"}', "bytes; a card is at most"),
    ("{not json", "not a model card (JSON: "),
    ('{"card": 99, "transform": {}}', f"expected version {CARD_VERSION} with a transform"),
], ids=["deep", "megabytes", "not_json", "other_version"])
def test_hostile_card_files_are_one_line(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        read_card(path)
    assert problem in str(e.value) and "\n" not in str(e.value)
