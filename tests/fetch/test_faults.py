"""Each fault the stand-in Hub can inject, and what fetch does about it: retry with a logged cause, resolve again,
start over, or stop with a message that says what to do."""

import threading
import time

import pytest

from supervisor.fetch import FetchError, fetch_plan
from supervisor.fetch.store import Partial
from tests.fetch.conftest import FAST, TOKEN, Stopper, hub_file, make_plan, make_settings, payload

MB = 1_000_000
KEY = "org/repo/w.bin"


@pytest.fixture
def file(hub):
    data = payload(2 * MB, seed=11)
    hub.add_file("org/repo", "w.bin", data)
    return data


def fetch(hub, models, **env):
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 2 * MB))
    return fetch_plan(plan, make_settings(hub, models, **env), tuning=FAST)


def causes(events):
    return [e["cause"] for e in events.all("fetch.retry")]


@pytest.mark.parametrize("kind,cause", [("reset", "reset"), ("close", "closed")])
def test_dropped_connections_resume_where_they_stopped(hub, models, events, file, kind, cause):
    hub.fault(kind, KEY, after=100_000, times=2)
    report = fetch(hub, models)
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert causes(events).count(cause) == 2
    # The retry asks for the bytes after those already written, not the whole part again.
    faulted = [r for r in hub.requests(key=KEY) if r.fault == kind]
    starts = {int(r.range.split("=")[1].split("-")[0]) for r in hub.requests(key=KEY, method="GET")}
    assert all(int(r.range.split("=")[1].split("-")[0]) + r.sent in starts for r in faulted)


def test_a_stall_is_cut_by_the_watchdog_and_retried(hub, models, events, file):
    hub.fault("stall", KEY, after=50_000, seconds=30)
    started = time.monotonic()
    report = fetch(hub, models, DOWNLOAD_STALL_TIMEOUT="1")
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert "stall" in causes(events) and time.monotonic() - started < 10


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_on_the_cdn_are_retried(hub, models, events, file, status):
    hub.fault("status", KEY, status=status, times=2)
    assert fetch(hub, models).ok
    assert causes(events).count({408: "timeout_408"}.get(status, f"http_{status}")) == 2


def test_server_errors_on_the_hub_metadata_are_retried(hub, models, events, file):
    hub.fault("status", KEY, status=503, times=2, on="meta")
    assert fetch(hub, models).ok
    assert [e["cause"] for e in events.all("fetch.retry")] == ["http_503", "http_503"]
    assert len(hub.requests(key=KEY, method="HEAD")) == 3


def test_429_waits_as_long_as_retry_after_says(hub, models, events, file):
    hub.fault("429", KEY, retry_after=1, times=1)
    started = time.monotonic()
    assert fetch(hub, models).ok
    (retry,) = events.all("fetch.retry")
    assert retry["cause"] == "rate_limited" and retry["wait"] == 1.0
    assert time.monotonic() - started >= 1.0


def test_expired_signed_url_is_resolved_again(hub, models, events, file):
    hub.fault("expired", KEY, times=3)
    assert fetch(hub, models).ok
    assert causes(events).count("expired_url") == 3
    assert len(hub.requests(key=KEY, method="HEAD")) >= 2 and events.all("fetch.resolved_again")


def test_expiring_urls_during_a_slow_download(hub, models, events, file):
    hub.url_ttl = 0.3
    hub.rate = 200_000  # bytes/s per connection: new parts start after the URL expired
    # How many parts meet an expired URL before any byte depends on the machine's speed (each spends a retry):
    # enough budget that only the behaviour is tested, not the timing.
    assert fetch(hub, models, DOWNLOAD_RETRIES="50").ok
    assert "expired_url" in causes(events)
    assert (models / "loras/w.bin").read_bytes() == file


def test_corrupt_bytes_are_caught_by_sha256_and_fetched_again(hub, models, events, file):
    hub.fault("corrupt", KEY, after=100, times=1)  # the first part: never stolen before its first bytes
    report = fetch(hub, models)
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert "corrupt" in causes(events)


def test_bytes_that_stay_corrupt_fail_and_never_reach_the_final_name(hub, models, file):
    hub.fault("corrupt", KEY, after=10, times=None)
    report = fetch(hub, models)
    assert not report.ok and "sha256" in report.failed["loras/w.bin"]
    assert not (models / "loras/w.bin").exists() and not Partial(models, "loras/w.bin").path.exists()


def test_a_wrong_size_header_once_is_resolved_again(hub, models, events, file):
    hub.fault("wrong_size", KEY, delta=1000, times=1)
    report = fetch(hub, models)
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert {"size_mismatch", "version_changed"} <= set(causes(events))


def test_a_wrong_size_header_always_fails_clearly(hub, models, file):
    hub.fault("wrong_size", KEY, delta=-1000, times=None)
    report = fetch(hub, models, DOWNLOAD_RETRIES="2")
    assert "the server has 2000000 bytes, the Hub said 1999000" in report.failed["loras/w.bin"]
    assert not (models / "loras/w.bin").exists()


def test_ignored_range_falls_back_to_one_stream(hub, models, events, file):
    hub.fault("ignore_range", KEY, times=None)
    report = fetch(hub, models)
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert "range_ignored" in causes(events)


def test_retries_run_out_and_the_file_fails_without_a_final_file(hub, models, events, file):
    hub.fault("status", KEY, status=503, times=None)
    report = fetch(hub, models, DOWNLOAD_RETRIES="3")
    assert not report.ok and "HTTP 503" in report.failed["loras/w.bin"]
    assert not (models / "loras/w.bin").exists()
    assert events.all("fetch.failed")


@pytest.mark.parametrize("token,needle", [("", "no HF_TOKEN is set"), ("hf_WrongToken000000000000000000", "has no access")])
def test_gated_repo_says_to_accept_the_licence_and_is_not_retried(hub, models, events, token, needle):
    hub.add_file("org/gated", "w.bin", b"x" * 10)
    hub.gate("org/gated", TOKEN)
    plan = make_plan(hub_file("org/gated", "w.bin", "loras/w.bin", 10))
    env = {"HF_TOKEN": token} if token else {}
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, models, **env), tuning=FAST)
    message = str(caught.value)
    assert needle in message and "org/gated" in message and "accept the licence" in message
    assert caught.value.exit_code == 2
    assert len(hub.requests(origin="hub")) == 1 and events.all("fetch.retry") == []
    if token:
        assert token not in message and token not in events.text


@pytest.mark.parametrize("repo,path,needle", [
    ("org/nothere", "w.bin", "repository org/nothere not found"),
    ("org/repo", "nothere.bin", "'nothere.bin' not found in org/repo@main"),
])
def test_missing_repo_or_file_names_repo_path_and_feature(hub, models, events, file, repo, path, needle):
    plan = make_plan(hub_file(repo, path, "loras/x.bin", 10))
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    assert needle in str(caught.value) and "needed by test" in str(caught.value)
    assert len(hub.requests(origin="hub")) == 1 and events.all("fetch.retry") == []


def test_stop_returns_within_a_second_and_the_next_run_resumes(hub, models, events, file):
    hub.rate = 300_000  # per connection: several seconds for the whole file
    stop = threading.Event()
    stopper = Stopper(lambda: hub.bytes_sent(KEY) > 600_000, stop)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 2 * MB))
    settings = make_settings(hub, models, DOWNLOAD_STALL_TIMEOUT="30")
    report = fetch_plan(plan, settings, stop=stop, tuning=FAST)
    waited = time.monotonic() - stopper.fired_at
    stopper.close()
    assert report.interrupted and not report.ok and waited < 5.0, waited  # about a second; slack for a busy CI
    assert not (models / "loras/w.bin").exists()
    partial = Partial(models, "loras/w.bin")
    kept = partial.bytes_done()
    assert kept > 300_000 and partial.path.exists()
    assert not list((models / ".supervisor/locks").rglob("*.lock")), "locks are released"
    hub.rate = 0
    hub.reset_log()
    report = fetch_plan(plan, settings, tuning=FAST)
    assert report.ok and (models / "loras/w.bin").read_bytes() == file
    assert report.bytes_downloaded == 2 * MB - kept
    assert events.all("fetch.resume")[0]["bytes_done"] == kept
