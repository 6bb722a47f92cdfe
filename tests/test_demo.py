"""The README's first command, quick: the whole pipeline on the embedded demo corpus."""
import json

import pytest

from faces_support import wheel_path


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, cli):
    wheel = wheel_path()
    r = cli("demo", "--quick", "--data-dir", tmp_path / "demo", "--set", f"faces.wheel={wheel}",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = tmp_path / "demo" / "report"
    out = json.loads((report / "summary.json").read_text())
    for key in ("heldout_accuracy", "deploy", "weights", "stages"):
        assert key in out
    assert set(out["stages"]) == {"scrape", "faces", "label", "train", "score"}
    assert out["stages"]["scrape"]["posts_new"] == out["posts"]
    assert "posts_seen_again" in out["stages"]["scrape"]        # counters by their real names
    faces = out["stages"]["faces"]
    assert 0 < faces["with_faces"] < faces["scanned"]            # the face filter acts
    excluded = out["stages"]["label"]["excluded"]
    assert excluded.get("too few faces", 0) > 0 and excluded.get("too recent", 0) > 0
    assert out["heldout_accuracy"] > 0.55
    assert len(out["cues"]) >= 6
    for f in ("index.html", "top.jpg", "worst.jpg", "continuum.jpg", "histogram.png",
              "cues.png", "training_curve.png"):
        assert (report / f).stat().st_size > 0, f
    html = (report / "index.html").read_text()
    assert "synthetic" in html and "Held-out accuracy" in html
    assert "<table class='stages'>" in html and "<pre>" not in html
    assert str(report / "index.html") in r.stdout


def test_the_demo_server_keeps_its_port_so_runs_repeat_and_moves_when_it_is_taken():
    """The posts' URIs carry the server's port and the label stage orders records by a hash of
    the URI: the demo asks for one port each run (so a rerun trains on the same order), and
    takes a free one when another process holds it."""
    import socket

    from deepselfie.demo.mastodon import MastodonAPIServer
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = MastodonAPIServer(port=port).start()
    try:
        assert first.url == f"http://127.0.0.1:{port}"
        second = MastodonAPIServer(port=port).start()
        try:
            assert second.url.startswith("http://127.0.0.1:") and second.url != first.url
        finally:
            second.stop()
    finally:
        first.stop()
