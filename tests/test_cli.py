"""The deepselfie command: help, global options, one-line errors with exit code 2."""
import yaml

from deepselfie.cli import build_parser


def test_help_lists_the_registered_stages(cli):
    r = cli("--help")
    assert r.returncode == 0
    sub = build_parser()._subparsers._group_actions[0]
    for name in sub.choices:
        assert name in r.stdout


def test_no_command_prints_help(cli):
    r = cli()
    assert r.returncode == 0 and "usage: deepselfie" in r.stdout


def test_typo_in_config_is_one_line_naming_key_and_file(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("runtime:\n  devcie: cpu\n")
    r = cli("config", "--config", cfg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(cfg) in lines[0] and "runtime.devcie" in lines[0]


def test_config_in_cwd_is_picked_up_and_set_overrides_it(cli, tmp_path):
    (tmp_path / "config.yaml").write_text("runtime:\n  threads: 3\n")
    r = cli("config", cwd=tmp_path)
    assert r.returncode == 0
    assert yaml.safe_load(r.stdout)["runtime"]["threads"] == 3
    r = cli("config", "--set", "runtime.threads=5", "--get", "runtime.threads", cwd=tmp_path)
    assert r.stdout.strip() == "5"


def test_data_dir_option(cli, tmp_path):
    r = cli("config", "--data-dir", tmp_path / "d", "--get", "paths.data_dir", cwd=tmp_path)
    assert r.stdout.strip() == str(tmp_path / "d")


def test_bad_set_and_missing_config_file(cli, tmp_path):
    r = cli("config", "--set", "runtime.threads=lots", cwd=tmp_path)
    assert r.returncode == 2 and "runtime.threads" in r.stderr
    r = cli("config", "--config", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_unknown_option_is_one_line_exit_2(cli):
    r = cli("config", "--frobnicate")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--frobnicate" in r.stderr
