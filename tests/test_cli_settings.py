"""The one path from options to settings: a flag declares the config key it sets and goes through
the same merge and checks as --set; an explicit flag always wins (0 and false included); flags
not given leave the config's value; runtime.backend reaches every command that builds nets."""
import json

import pytest

from deepselfie.cli import build_parser, config_for, main
from models.caffe import backend
from nets import bright_net
from test_score import make_images


@pytest.fixture
def scoring(tmp_path):
    """A bright net, four images and the score options that use them."""
    deploy, weights = bright_net(tmp_path)
    make_images(tmp_path / "imgs")
    opts = ["--model", deploy, "--weights", weights, "--mean", "128,128,128", "-q"]
    return tmp_path, [str(o) for o in opts]


def _config(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return ["--config", str(p)]


def _one_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _cfg(*argv):
    return config_for(build_parser().parse_args([str(a) for a in argv]))


def test_batch_size_0_is_refused_naming_the_key_not_replaced_by_the_config(scoring, capsys):
    tmp, opts = scoring
    conf = _config(tmp, "score:\n  batch_size: 8\n")
    assert main(["score", str(tmp / "imgs"), *opts, *conf, "--batch-size", "0"]) == 2
    assert _one_line(capsys) == ("deepselfie score: error: --batch-size: score.batch_size: "
                                 "must be >= 1, not 0")


def test_top_0_is_refused_naming_the_key(scoring, capsys):
    tmp, opts = scoring
    conf = _config(tmp, "score:\n  top: 5\n")
    assert main(["score", str(tmp / "imgs"), *opts, *conf, "--top", "0"]) == 2
    assert "--top: score.top: must be >= 1, not 0" in _one_line(capsys)


def test_a_flag_beats_set_and_the_config_file_and_absent_flags_leave_them(tmp_path):
    conf = _config(tmp_path, "score:\n  batch_size: 8\n  top: 5\nruntime:\n  fast: true\n")
    argv = ["score", "imgs", *conf]
    assert _cfg(*argv).score.batch_size == 8
    assert _cfg(*argv, "--set", "score.batch_size=4").score.batch_size == 4
    cfg = _cfg(*argv, "--set", "score.batch_size=4", "--batch-size", "2", "--no-fast")
    assert cfg.score.batch_size == 2 and cfg.runtime.fast is False and cfg.score.top == 5
    assert _cfg(*argv, "--set", "runtime.fast=false", "--fast").runtime.fast is True
    # the same for the other commands' flags: crop, tsne, serve, label, scrape, train
    assert _cfg("crop", "x", "--seed", "0", "--set", "crop.seed=3").crop.seed == 0
    assert _cfg("tsne", "x", "--perplexity", "5").tsne.perplexity == 5.0
    assert _cfg("serve", "--port", "0", "--set", "serve.port=9000").serve.port == 0
    assert _cfg("label", "--run", "other").label.run_name == "other"
    cfg = _cfg("scrape", "--tag", "a", "--tag", "b", "--max-posts", "0",
               "--set", "scrape.max_posts=7")
    assert cfg.scrape.tags == ["a", "b"] and cfg.scrape.max_posts == 0
    cfg = _cfg("train", "-solver", "s.prototxt", "-fast", "--sigint_effect", "none")
    assert cfg.runtime.fast is True and cfg.train.sigint_effect == "none"


def test_flag_values_pass_the_schema_checks_as_set_values_do(tmp_path, capsys):
    for argv, needle in [
        (["crop", "x", "--min-scale", "0"], "--min-scale: crop.min_scale: must be in (0, 1]"),
        (["serve", "--port", "70000"], "--port: serve.port: must be between 0 and 65535"),
        (["label", "--run", "../up"], "--run: label.run_name: must be a plain folder name"),
        (["scrape", "--concurrency", "0"], "--concurrency: scrape.concurrency: must be >= 1"),
        (["score", "x", "--resize", "stretch"], "--resize: score.resize: must be one of"),
    ]:
        assert main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
        assert needle in _one_line(capsys)
    assert not (tmp_path / "d").exists()


def test_no_fast_turns_fast_mode_off_over_the_config(scoring, capsys):
    tmp, opts = scoring
    imgs = str(tmp / "imgs")

    def scores(*extra):
        out = tmp / "scores.json"
        assert main(["score", imgs, *opts, "--json", "--out", str(out), *extra]) == 0
        return json.loads(out.read_text())

    exact = scores()
    fast_conf = _config(tmp, "runtime:\n  fast: true\n")
    assert scores(*fast_conf) != exact                # bf16: the scores move
    assert scores(*fast_conf, "--no-fast") == exact   # exact again


def _report_headings(path):
    text = (path / "index.html").read_text()
    return [h for h in ("Best 3", "Best 2", "Worst 3", "Worst 2", "Worst 1") if h in text]


def test_worst_is_used_as_given_and_never_falls_back_to_score_top(scoring, capsys, monkeypatch):
    tmp, opts = scoring
    monkeypatch.chdir(tmp)       # the worst sheet goes beside the scores: ./worst.jpg
    imgs = str(tmp / "imgs")
    conf = _config(tmp, "score:\n  top: 3\n")
    assert main(["score", imgs, *opts, *conf, "--report", str(tmp / "r1"), "--worst", "0"]) == 0
    assert _report_headings(tmp / "r1") == ["Best 3"]
    assert not (tmp / "r1" / "worst.jpg").exists()
    assert main(["score", imgs, *opts, *conf, "--report", str(tmp / "r2"), "--worst", "1"]) == 0
    assert _report_headings(tmp / "r2") == ["Best 3", "Worst 1"]
    assert (tmp / "worst.jpg").is_file()
    # without --worst the report's worst section follows the top, --top included
    assert main(["score", imgs, *opts, *conf, "--report", str(tmp / "r3"), "--top", "2"]) == 0
    assert _report_headings(tmp / "r3") == ["Best 2", "Worst 2"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:   # --worst needs its N; it does not take score.top
        main(["score", imgs, *opts, "--worst"])
    assert e.value.code == 2
    assert "--worst: expected one argument" in _one_line(capsys)
    assert main(["score", imgs, *opts, "--worst", "-1"]) == 2
    assert "--worst: must be >= 0, not -1" in _one_line(capsys)


NET_COMMANDS = [
    ["score", "imgs"], ["crop", "imgs"], ["tsne", "imgs"], ["serve"],
    ["train", "--solver", "s.prototxt"], ["test", "--model", "m.prototxt", "--weights", "w"],
    ["time", "--model", "m.prototxt"],
]


@pytest.mark.skipif(backend.available(), reason="real pycaffe is importable here")
@pytest.mark.parametrize("command", NET_COMMANDS, ids=lambda c: c[0])
def test_runtime_backend_caffe_reaches_every_command_that_builds_nets(tmp_path, capsys, command):
    conf = _config(tmp_path, "runtime:\n  backend: caffe\n")
    assert main([*command, *conf, "--data-dir", str(tmp_path / "d")]) == 2
    line = _one_line(capsys)
    assert f"{tmp_path / 'c.yaml'}: runtime.backend: caffe: real pycaffe is not importable" \
        in line, line
    assert backend.backend() == "torch"


@pytest.mark.skipif(backend.available(), reason="real pycaffe is importable here")
def test_backend_flag_and_set_are_named_in_the_error(tmp_path, capsys):
    assert main(["train", "--solver", "s.prototxt", "--backend", "caffe"]) == 2
    assert "--backend: runtime.backend: caffe: real pycaffe" in _one_line(capsys)
    assert main(["score", "imgs", "--set", "runtime.backend=caffe"]) == 2
    assert "--set: runtime.backend: caffe: real pycaffe" in _one_line(capsys)


def test_runtime_backend_torch_scores(scoring, capsys):
    tmp, opts = scoring
    conf = _config(tmp, "runtime:\n  backend: torch\n")
    out = tmp / "scores.json"
    assert main(["score", str(tmp / "imgs"), *opts, *conf, "--json", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and rows[0]["score"] > 0.5
    assert backend.backend() == "torch"


def test_the_face_detector_runs_on_torch_and_says_so_when_caffe_is_asked(tmp_path, cli):
    conf = _config(tmp_path, "runtime:\n  backend: caffe\n")
    res = cli("faces", "--json", *conf)      # --json without --image: refused after the warning
    assert res.returncode == 2
    assert "runtime.backend caffe: this command's nets run on the torch engine" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        "deepselfie faces: error: --json: goes with --image PATH"


def test_the_relaunched_train_command_has_the_same_settings(tmp_path):
    """train on several GPUs relaunches itself per GPU: the flags travel as --set, after the
    user's, so the child's configuration is the parent's."""
    from deepselfie.cli.caffe import _relaunch_argv
    conf = _config(tmp_path, "runtime:\n  fast: true\ntrain:\n  sigint_effect: snapshot\n")
    argv = ["train", "-solver", "s.prototxt", *conf, "--set", "runtime.fast=true", "--no-fast",
            "--sigint_effect", "none", "-gpu", "0,1"]
    args = build_parser().parse_args(argv)
    child = _relaunch_argv(args)
    assert child[:2] == ["-m", "deepselfie"]
    child_args = build_parser().parse_args(child[2:])
    assert config_for(child_args) == config_for(args)
    assert config_for(child_args).runtime.fast is False
    assert child_args.gpu == "0,1" and child_args.solver == "s.prototxt"
