"""config.yaml and the schema: defaults, validation, --set overrides."""
import pathlib

import pytest
import yaml

from deepselfie.config import SCHEMA, load_config, parse_override, schema_defaults
from deepselfie.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_yaml_spells_out_exactly_the_schema_defaults():
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert data == schema_defaults()


def test_every_key_in_config_yaml_is_commented():
    lines = (ROOT / "config.yaml").read_text().splitlines()
    for line in lines:
        if line.startswith("  ") and ":" in line and not line.strip().startswith(("#", "-")):
            assert "#" in line, f"config.yaml: no comment on {line.strip()!r}"


def test_missing_default_file_means_defaults(tmp_path):
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg == schema_defaults()
    assert cfg.runtime.device == "auto"


def test_named_missing_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", required=True)


def test_unknown_key_is_named_with_the_file_and_a_suggestion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("runtime:\n  devcie: cpu\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "runtime.devcie" in msg and "did you mean runtime.device" in msg


def test_unknown_section_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("runtme:\n  device: cpu\n")
    with pytest.raises(UserError, match="runtme: unknown key"):
        load_config(p)


@pytest.mark.parametrize("text,field", [
    ("runtime:\n  threads: two\n", "runtime.threads"),
    ("runtime:\n  fast: 1\n", "runtime.fast"),
    ("runtime:\n  threads: true\n", "runtime.threads"),
    ("runtime:\n  backend: tensorflow\n", "runtime.backend"),
    ("paths:\n  data_dir: null\n", "paths.data_dir"),
    ("runtime: 3\n", "runtime"),
])
def test_wrong_types_are_refused(tmp_path, text, field):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    assert f"{p}: {field}:" in str(e.value)


def test_broken_yaml_names_line_and_column(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("runtime:\n  device: [cpu\n")
    with pytest.raises(UserError, match=rf"{p}:\d+:\d+: not valid YAML"):
        load_config(p)


def test_overrides_are_typed_like_yaml(tmp_path):
    cfg = load_config(tmp_path / "none.yaml",
                      overrides=["runtime.threads=4", "runtime.fast=true", "paths.models_dir=/m"])
    assert cfg.runtime.threads == 4 and cfg.runtime.fast is True
    assert str(cfg.models_dir) == "/m"


def test_override_errors(tmp_path):
    for bad, match in [("runtime.threads", "expected section.key=value"),
                       ("threads=3", "expected section.key=value"),
                       ("runtime.thread=3", "unknown key"),
                       ("runtime.threads=x", "must be an integer")]:
        with pytest.raises(UserError, match=match):
            load_config(tmp_path / "none.yaml", overrides=[bad])


def test_data_dir_beats_file_and_derived_paths(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("paths:\n  data_dir: /from/file\n")
    cfg = load_config(p, data_dir=tmp_path / "d")
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.catalog_path == tmp_path / "d" / "catalog.sqlite"
    assert cfg.models_dir == tmp_path / "d" / "models"


def test_float_keys_accept_integers():
    from deepselfie.config import Key, _check_value
    assert _check_value(3, Key(float, 0.0), "f", "k") == 3.0


def test_parse_override_keeps_strings():
    assert parse_override("paths.data_dir=some dir") == ("paths", "data_dir", "some dir")


def test_schema_keys_have_help():
    for sec, keys in SCHEMA.items():
        for name, key in keys.items():
            assert key.help, f"{sec}.{name} has no help text"


@pytest.mark.parametrize("override,message", [
    ("score.batch_size=0", "--set: score.batch_size: must be >= 1, not 0"),
    ("label.group_size=5", "--set: label.group_size: must be an even number >= 2, not 5"),
    ("label.jpeg_quality=101", "--set: label.jpeg_quality: must be between 1 and 100, not 101"),
    ("label.run_name=..", "--set: label.run_name: must be a plain folder name, not '..'"),
    ("faces.max_side=5", "--set: faces.max_side: must be 0 (no limit) or at least 12, not 5"),
    ("faces.scale_factor=1", "--set: faces.scale_factor: must be between 0 and 1 (exclusive)"),
    ("faces.thresholds=[0.5, 2, 0.1]", "--set: faces.thresholds: must be three scores"),
    ("crop.min_scale=0", "--set: crop.min_scale: must be in (0, 1], not 0.0"),
    ("scrape.page_size=41", "--set: scrape.page_size: must be between 1 and 40, not 41"),
    ("scrape.timeout=0", "--set: scrape.timeout: must be > 0, not 0.0"),
])
def test_ranges_are_checked_once_by_the_schema(tmp_path, override, message):
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "none.yaml", overrides=[override])
    assert str(e.value).startswith(message)


def test_rules_that_tie_keys_run_after_every_source_and_name_where_the_value_came_from(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("label:\n  val_ratio: 0.3\n")
    with pytest.raises(UserError, match=rf"^{p}: label.train_ratio: .* must sum to 1, not 1.2"):
        load_config(p)
    # fixed by a later source: no error for the passing state in between
    cfg = load_config(p, overrides=["label.test_ratio=0.1", "label.train_ratio=0.6"])
    assert cfg.label.val_ratio == 0.3
    with pytest.raises(UserError, match=r"^--max: label.max_followers: must be >= "
                                        r"label.min_followers \(10\)"):
        load_config(None, settings=[("--max", "label.max_followers", 5)])


def test_with_settings_is_a_checked_copy(tmp_path):
    cfg = load_config(None)
    new = cfg.with_settings({"scrape.folder": tmp_path, "scrape.max_posts": 0,
                             "scrape.tags": None}, "run_scrape")
    assert new.scrape.folder == str(tmp_path) and new.scrape.max_posts == 0
    assert new.scrape.tags == cfg.scrape.tags and cfg.scrape.folder is None
    with pytest.raises(UserError, match="^run_scrape: scrape.max_posts: must be >= 0, not -1"):
        cfg.with_settings({"scrape.max_posts": -1}, "run_scrape")


@pytest.mark.parametrize("text, problem", [
    ("runtime: " + "[" * 100_000 + "]" * 100_000 + "\n", "not a config: nested too deeply"),
    ("runtime:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(900)),
     "not a config: nested too deeply"),
    ("runtime:\n  device: cpu\nruntime:\n  device: cuda\n",
     "3:1: not valid YAML: the key 'runtime' is given twice"),
    ("runtime:\n  device: cpu\n  device: cuda\n",
     "3:3: not valid YAML: the key 'device' is given twice"),
    ("runtime: !!python/object/apply:os.system ['true']\n", "1:10: not valid YAML: could not "
     "determine a constructor"),
    ("scrape:\n  tags: [" + ",".join(['"' + "x" * 100 + '"'] * 12_000) + "]\n",
     "is 1,236,018 bytes; a config file is at most 1,048,576"),
], ids=["deep_lists", "deep_mappings", "section_twice", "key_twice", "python_tag", "megabytes"])
def test_hostile_config_files_are_one_line(tmp_path, text, problem):
    """Deep nesting (past Python's stack), a key given twice (PyYAML would keep the last one
    silently), a python tag, a file of megabytes: one UserError line naming the file."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}") and problem in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_anchors_and_merge_keys_still_read(tmp_path):
    """The key-once check leaves YAML's anchors, aliases and merge keys (<<) as they were."""
    p = tmp_path / "c.yaml"
    p.write_text("runtime: &rt\n  device: cpu\n  threads: 2\n"
                 "score:\n  <<: {batch_size: 8, top: 3}\n  top: 2\n")
    cfg = load_config(p)
    assert cfg.runtime.device == "cpu" and cfg.runtime.threads == 2
    assert cfg.score.batch_size == 8 and cfg.score.top == 2


@pytest.mark.parametrize("text, problem", [
    ("runtime.device=" + "[" * 50_000, "value is nested too deeply"),
    ("runtime.device={a: 1, a: 2}", "the key 'a' is given twice"),
], ids=["deep", "key_twice"])
def test_hostile_set_values_are_one_line(text, problem):
    with pytest.raises(UserError, match=problem):
        parse_override(text)
