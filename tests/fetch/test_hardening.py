"""What a newcomer and an operator hit (issue 13) and behaviour that a sabotage got past (issue 19), on the fetch
side: the disk reserve with nothing to download, full retry backoff, a free retry after progress, an unreachable
Hub, the closing summary, MODELS_DIR that cannot be written, and a bug in one file."""

import socket
import threading
from dataclasses import replace

import pytest

from supervisor.fetch import FetchError, fetch_plan
from supervisor.fetch.report import render_dry_run
from tests.fetch.conftest import FAST, hub_file, make_plan, make_settings, payload

KEY = "org/repo/w.bin"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_files_in_place_need_no_disk_even_below_the_reserve(hub, models, events):
    # A complete volume without markers (say, .supervisor/verified/ was deleted) on a disk below DISK_RESERVE_GB:
    # the files are hashed and adopted; nothing is downloaded, so the reserve is only a warning.
    data = payload(300_000, seed=3)
    hub.add_file("org/repo", "w.bin", data)
    (models / "loras").mkdir()
    (models / "loras/w.bin").write_bytes(data)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", len(data)))
    report = fetch_plan(plan, make_settings(hub, models, DISK_RESERVE_GB="100000"), tuning=FAST)
    assert report.ok and report.verified == ["loras/w.bin"]
    (disk,) = events.all("fetch.disk")
    assert disk["level"] == "warning" and "DISK_RESERVE_GB=100000" in disk["message"]


def test_a_retry_waits_the_whole_backoff(hub, models, events):
    # backoff_initial 0.4 s: the first wait is 0.2-0.4 s (jitter 0.5-1), the second 0.4-0.8 s; not half of that.
    data = payload(300_000, seed=4)
    hub.add_file("org/repo", "w.bin", data)
    hub.fault("status", KEY, status=503, times=2)
    tuning = replace(FAST, backoff_initial=0.4, backoff_max=10.0)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", len(data)))
    assert fetch_plan(plan, make_settings(hub, models), tuning=tuning).ok
    waits = [e["wait"] for e in events.all("fetch.retry") if e["cause"] == "http_503"]
    assert len(waits) == 2
    assert 0.2 <= waits[0] <= 0.4 and 0.4 <= waits[1] <= 0.8, waits


def test_a_retry_after_progress_is_free(hub, models, events):
    # One connection (a small file), dropped four times, each time after more bytes: with DOWNLOAD_RETRIES=1 it
    # still completes, because only retries that made no progress spend the budget.
    data = payload(400_000, seed=6)
    hub.add_file("org/repo", "w.bin", data)
    hub.fault("reset", KEY, after=60_000, times=4)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", len(data)))
    report = fetch_plan(plan, make_settings(hub, models, DOWNLOAD_RETRIES="1"), tuning=FAST)
    assert report.ok and (models / "loras/w.bin").read_bytes() == data
    assert [e["cause"] for e in events.all("fetch.retry")].count("reset") == 4
    # Without progress the budget is spent: a file that never sends a byte fails after DOWNLOAD_RETRIES.
    hub.add_file("org/repo", "x.bin", payload(400_000, seed=7))
    hub.fault("reset", "org/repo/x.bin", after=0, times=None)
    plan = make_plan(hub_file("org/repo", "x.bin", "loras/x.bin", 400_000))
    report = fetch_plan(plan, make_settings(hub, models, DOWNLOAD_RETRIES="1"), tuning=FAST)
    assert "loras/x.bin" in report.failed


def test_a_failed_fetch_ends_with_a_summary_at_error_level_that_says_what(hub, models, events):
    hub.add_file("org/repo", "good.bin", payload(150_000))
    plan = make_plan(hub_file("org/repo", "good.bin", "loras/good.bin", 150_000),
                     hub_file("org/missing", "x.bin", "loras/x.bin", 10))
    with pytest.raises(FetchError):
        fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    (summary,) = events.all("fetch.summary")
    assert summary["level"] == "error" and summary["ok"] is False  # `select(.level != "info")` shows it
    assert summary["message"].startswith("1 file not in place: loras/x.bin: repository org/missing not found")
    ok = make_plan(hub_file("org/repo", "good.bin", "loras/good.bin", 150_000))
    fetch_plan(ok, make_settings(hub, models), tuning=FAST)
    assert events.all("fetch.summary")[-1]["level"] == "info"


def unreachable_settings(models, **env):
    return make_settings(type("Hub", (), {"url": f"http://127.0.0.1:{closed_port()}"}), models, **env)


def run_bounded(fn, seconds=60.0):
    """Run fn in a thread; give it a stop event that fires after `seconds` (so a regression fails, never hangs)."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return fn(stop), stop.is_set()
    finally:
        timer.cancel()


def test_an_unreachable_hub_fails_every_file_soon_with_one_line_for_people(models, events):
    plan = make_plan(*(hub_file("org/repo", f"f{i}.bin", f"loras/f{i}.bin", 1000) for i in range(8)))
    # Generous retries: without the unreachable rule this would retry for many minutes.
    settings = unreachable_settings(models, DOWNLOAD_RETRIES="1000")
    tuning = replace(FAST, unreachable_after=1.0)

    def fetch(stop):
        try:
            return fetch_plan(plan, settings, stop=stop, tuning=tuning)
        except FetchError as exc:
            return exc.report

    report, timed_out = run_bounded(fetch)
    assert not timed_out, "still retrying after 60 s"
    assert len(report.failed) == 8 and all("cannot reach http://127.0.0.1" in why for why in report.failed.values())
    (line,) = events.all("fetch.unreachable")
    assert line["level"] == "error" and "HF_HUB_OFFLINE=true" in line["message"]
    assert len([e for e in events.all("fetch.retry") if e["level"] == "warning"]) <= 8  # not a wall of retries


def test_a_dry_run_without_the_hub_lists_the_catalogue_sizes_as_unconfirmed(models, events):
    plan = make_plan(hub_file("org/repo", "a.bin", "loras/a.bin", 7_000_000),
                     hub_file("org/repo", "b.bin", "loras/b.bin", 3_000_000))
    tuning = replace(FAST, unreachable_after=1.0)
    report, timed_out = run_bounded(lambda stop: fetch_plan(plan, unreachable_settings(models), stop=stop,
                                                            dry_run=True, tuning=tuning))
    assert not timed_out and report.ok and report.failed == {}
    assert report.bytes_planned == 10_000_000
    assert all(not p.exact and "unconfirmed" in p.note for p in report.planned)
    text = render_dry_run(report)
    assert "loras/a.bin" in text and "unconfirmed" in text and "(est.)" in text


def test_models_dir_below_a_file_is_an_error_naming_models_dir(hub, models):
    blocker = models / "not-a-folder"
    blocker.write_text("x")
    hub.add_file("org/repo", "w.bin", payload(150_000))
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 150_000))
    with pytest.raises(FetchError) as caught:
        fetch_plan(plan, make_settings(hub, blocker / "models"), tuning=FAST)
    (problem,) = caught.value.problems
    assert problem.where == "MODELS_DIR" and "cannot be written" in problem.what and "a file" in problem.fix
    assert caught.value.exit_code == 2 and hub.log == []  # found before any request


def test_a_bug_in_one_file_fails_that_file_instead_of_passing_silently(hub, models, monkeypatch):
    from supervisor.fetch import transfer

    hub.add_file("org/repo", "w.bin", payload(150_000))

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(transfer.Transfer, "execute", broken)
    plan = make_plan(hub_file("org/repo", "w.bin", "loras/w.bin", 150_000))
    report = fetch_plan(plan, make_settings(hub, models), tuning=FAST)
    assert not report.ok and "internal error: RuntimeError: a bug" in report.failed["loras/w.bin"]
