"""The fetcher against a real loopback server: retries, rate limits, redirects, limits."""
import time

import pytest
from requests.structures import CaseInsensitiveDict

import mastodon_server as ts
from scrape.fetch import Fetcher, FetchError, _short
from scrape.pacing import Pacer, seconds_until


@pytest.fixture
def srv():
    with ts.MastodonAPIServer(reset_after=0.3) as s:
        s.add_file("/f.jpg", b"x" * 1000)
        yield s


def fetcher(**kw):
    return Fetcher(**{"timeout": 2, "retries": 3, "backoff": 0.01, "max_wait": 10, **kw})


def test_no_retry_on_a_4xx(srv):
    with pytest.raises(FetchError) as e:
        fetcher().get(srv.url + "/missing.jpg")
    assert (e.value.reason, e.value.permanent) == ("http 404", True)
    assert len(srv.requests) == 1


def test_5xx_is_retried_then_given_up(srv):
    srv.fail_always("/f.jpg", "500")
    with pytest.raises(FetchError) as e:
        fetcher(retries=3).get(srv.url + "/f.jpg")
    assert e.value.reason == "http 500 (gave up after 4 tries)" and not e.value.permanent
    assert len(srv.requests) == 4


def test_a_host_that_keeps_failing_is_left_alone_for_the_run(srv):
    f = fetcher(retries=1)
    srv.add_file("/g.jpg", b"y")
    srv.fail_always("/f.jpg", "500")
    for _ in range(5):
        with pytest.raises(FetchError, match="gave up after 2 tries"):
            f.get(srv.url + "/f.jpg")
    n = len(srv.requests)
    with pytest.raises(FetchError, match="host keeps failing") as e:
        f.get(srv.url + "/g.jpg")
    assert not e.value.permanent and len(srv.requests) == n
    fresh = fetcher(retries=1)             # a success in between resets the count
    for _ in range(4):
        with pytest.raises(FetchError):
            fresh.get(srv.url + "/f.jpg")
    assert fresh.get(srv.url + "/g.jpg").body == b"y"
    with pytest.raises(FetchError, match="gave up"):
        fresh.get(srv.url + "/f.jpg")


def test_a_burst_of_faults_then_success(srv):
    srv.fail("/f.jpg", "503", "reset", "500")
    assert fetcher(retries=3).get(srv.url + "/f.jpg").body == b"x" * 1000
    assert [r.status for r in srv.requests] == [503, 200, 500, 200]   # the reset sent 200 + half


def test_a_timeout_is_retried(srv):
    srv.slow_seconds = 1.0
    srv.fail("/f.jpg", "timeout")
    assert fetcher(timeout=0.3).get(srv.url + "/f.jpg").status == 200
    assert len(srv.requests) == 2


def test_429_waits_for_retry_after(srv):
    srv.fail("/f.jpg", "retry-after:1")
    fetcher().get(srv.url + "/f.jpg")
    first, second = srv.requests
    assert second.time - first.time >= 0.95


def test_429_waits_for_the_iso_reset_without_retry_after(srv):
    srv.fail("/f.jpg", "429")
    fetcher().get(srv.url + "/f.jpg")
    first, second = srv.requests
    assert second.time - first.time >= 0.3 - 0.02


def test_a_429_asking_for_too_long_gives_up(srv):
    srv.fail("/f.jpg", "retry-after:3600")
    with pytest.raises(FetchError, match="rate limited"):
        fetcher(max_wait=5).get(srv.url + "/f.jpg")


def test_too_large(srv):
    with pytest.raises(FetchError, match="too large") as e:
        fetcher().get(srv.url + "/f.jpg", max_bytes=999)
    assert e.value.permanent


@pytest.mark.parametrize("target", ["ftp://x.example/f.jpg", "file:///etc/passwd",
                                    "javascript:alert(1)", "data:image/png;base64,AAAA"])
def test_redirects_only_to_http(srv, target):
    srv.fail_always("/r.jpg", f"redirect:{target}")
    with pytest.raises(FetchError, match=r"redirect target is not http\(s\)") as e:
        fetcher().get(srv.url + "/r.jpg")
    assert e.value.permanent


def test_relative_redirects_and_redirect_loops(srv):
    srv.fail_always("/r.jpg", "redirect:/f.jpg")
    assert fetcher().get(srv.url + "/r.jpg").body == b"x" * 1000
    srv.fail_always("/loop.jpg", "redirect:/loop.jpg")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetcher().get(srv.url + "/loop.jpg")


def test_the_token_never_follows_a_redirect_to_another_origin(srv):
    with ts.MastodonAPIServer() as other:
        other.add_file("/g.jpg", b"y")
        srv.fail_always("/r.jpg", f"redirect:{other.url}/g.jpg")
        fetcher().get(srv.url + "/r.jpg", headers={"Authorization": "Bearer secret"})
        assert srv.requests[0].headers.get("Authorization") == "Bearer secret"
        assert "Authorization" not in other.requests[0].headers


@pytest.mark.parametrize("url", ["ftp://x.example/a", "file:///etc/passwd", "x.example/a",
                                 "http://"])
def test_only_http_urls(url):
    with pytest.raises(FetchError) as e:
        fetcher().get(url)
    assert e.value.permanent


def test_seconds_until():
    h = CaseInsensitiveDict({"Date": "Sat, 29 Nov 2025 10:00:00 GMT"})
    assert seconds_until("2025-11-29T10:00:30.000Z", h) == 30           # against the server clock
    assert seconds_until("2025-11-29T09:00:00Z", h) == 0                 # past: no wait
    assert seconds_until("7", {}) == 7
    assert seconds_until("Sat, 29 Nov 2025 10:01:00 GMT", h) == 60       # an HTTP date
    assert abs(seconds_until(str(time.time() + 20), {}) - 20) < 1        # a Unix time
    assert seconds_until("soon", {}) is None and seconds_until(None, {}) is None


def test_the_pacer_spreads_what_remains_and_waits_for_a_reset():
    pacer = Pacer()
    pacer.observe("k", {"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "0.4"})
    assert pacer.wait("k") == 0
    assert 0.05 < pacer.wait("k") <= 0.11          # 0.4 s / 4 left
    pacer.observe("j", {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0.3"})
    t0 = time.monotonic()
    pacer.wait("j")
    assert time.monotonic() - t0 >= 0.28


def test_backoff_grows_with_jitter():
    f = fetcher(backoff=1.0, max_wait=100)
    for n in range(1, 6):
        waits = [f.backoff_delay(n) for _ in range(50)]
        assert all(2 ** (n - 1) / 2 <= w <= 2 ** (n - 1) for w in waits)
        assert len(set(waits)) > 1



def test_failures_get_short_names():
    # what requests raises when a host name does not resolve (no lookup here: no network)
    dns = ConnectionError("HTTPSConnectionPool(host='files.example', port=443): Max retries "
                          "exceeded with url: /x.jpg (Caused by NameResolutionError(\"Failed to "
                          "resolve 'files.example' ([Errno -3] Temporary failure in name "
                          "resolution)\"))")
    assert _short(dns) == "host not found"
    assert _short(ConnectionError("('Connection aborted.', ConnectionResetError(104, "
                                  "'Connection reset by peer'))")) == "connection reset"
    assert _short(ValueError("x" * 200)).endswith("...")
