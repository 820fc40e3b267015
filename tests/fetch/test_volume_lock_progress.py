"""The pieces around the transfer: volume states and markers, the cross-process lock, progress output, cleanup,
concurrency and deadline limits."""

import io
import json
import os
import socket
import threading
import time

from supervisor.plan import volume
from supervisor.fetch import fetch_plan
from supervisor.fetch.lock import Lock, lock_path
from supervisor.fetch.progress import Progress
from supervisor.fetch.store import clean_hf_orphans
from supervisor.plan.types import Download
from tests.fetch.conftest import FAST, hub_file, make_plan, make_settings, payload


def spec(dest="loras/a.bin", size=10, **extra):
    return Download(key=dest, dest=dest, kind="file", size=size, repo="org/repo", path="a.bin", **extra)


def test_volume_states_follow_size_mtime_and_the_recorded_source(tmp_path):
    a = spec()
    assert volume.file_state(tmp_path, a) == volume.MISSING
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras/a.bin").write_bytes(b"x" * 10)
    assert volume.file_state(tmp_path, a) == volume.UNVERIFIED
    assert volume.present(tmp_path, [a]) == {"loras/a.bin"}
    volume.write_marker(tmp_path, a.dest, volume.file_marker(tmp_path, a.dest, volume.identity(a), sha256="f" * 64))
    assert volume.file_state(tmp_path, a) == volume.VERIFIED
    stat = (tmp_path / "loras/a.bin").stat()  # same size, another mtime: rewritten in place, no longer vouched for
    os.utime(tmp_path / "loras/a.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert volume.file_state(tmp_path, a) == volume.UNVERIFIED
    os.utime(tmp_path / "loras/a.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert volume.file_state(tmp_path, a) == volume.VERIFIED
    moved = Download(key="x", dest=a.dest, kind="file", size=10, repo="org/other", path="a.bin")
    assert volume.file_state(tmp_path, moved) == volume.STALE
    assert volume.present(tmp_path, [moved]) == frozenset()
    pinned = spec(sha256="e" * 64)
    assert volume.file_state(tmp_path, pinned) == volume.STALE
    (tmp_path / "loras/a.bin").write_bytes(b"x" * 9)
    assert volume.file_state(tmp_path, a) == volume.WRONG_SIZE


def test_present_is_a_stat_per_file(tmp_path):
    # 500 sparse files of 1 GB: reading any of them would take far longer than the test's timeout. (How fast the
    # check is, is measured by bench/download.py's warm boot.)
    size = 10**9
    specs = [spec(dest=f"loras/f{i}.bin", size=size) for i in range(500)]
    (tmp_path / "loras").mkdir()
    for s in specs:
        with open(tmp_path / s.dest, "wb") as handle:
            handle.truncate(size)
        volume.write_marker(tmp_path, s.dest, volume.file_marker(tmp_path, s.dest, volume.identity(s)))
    assert len(volume.present(tmp_path, specs)) == 500


def _foreign_lock(path, host="other-pod", pid=1, started=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": started, "token": "t" * 32}))


def test_lock_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    path = lock_path(tmp_path, "loras/a.bin")
    _foreign_lock(path, host=socket.gethostname(), pid=os.getpid(), started=1.0)  # our pid, another start time
    lock = Lock(path, heartbeat=0.05, stale_after=30)
    assert lock.acquire(threading.Event(), poll=0.01)
    assert lock.broken is not None and lock.broken.started == 1.0
    lock.release()
    assert not path.exists()


def test_lock_of_another_pod_is_respected_while_it_beats_and_taken_when_it_stops(tmp_path):
    path = lock_path(tmp_path, "loras/a.bin")
    _foreign_lock(path)
    beating = threading.Event()

    def heartbeat():
        while not beating.wait(0.05):
            os.utime(path)

    threading.Thread(target=heartbeat, daemon=True).start()
    lock = Lock(path, heartbeat=0.05, stale_after=0.4)
    give_up = threading.Event()
    threading.Timer(1.0, give_up.set).start()
    assert not lock.acquire(give_up, poll=0.02), "taken while its owner still beats"
    beating.set()  # the other pod dies
    started = time.monotonic()
    assert lock.acquire(threading.Event(), poll=0.02)
    assert time.monotonic() - started > 0.3, "taken before its heartbeat went stale"
    lock.release()


def test_an_owner_whose_lock_was_taken_knows_it(tmp_path):
    path = lock_path(tmp_path, "loras/a.bin")
    lock = Lock(path, heartbeat=0.02)
    assert lock.try_acquire()
    path.unlink()
    _foreign_lock(path)
    assert lock.lost.wait(2)
    lock.release()
    assert path.exists(), "release leaves someone else's lock alone"


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    progress = Progress(stream=out, interval=0.01)
    progress.track("loras/a.bin", 1000)
    progress.state("loras/a.bin", "downloading")
    progress.add("loras/a.bin", 500)
    progress.start()
    deadline = time.monotonic() + 10
    while " 50.0%" not in out.getvalue() and time.monotonic() < deadline:
        threading.Event().wait(0.01)  # the bar redraws on its own thread: wait for the half-way frame
    progress.add("loras/a.bin", 500)
    progress.state("loras/a.bin", "done")
    final = progress.stop()
    assert final["total"]["percent"] == 100.0
    text = out.getvalue()
    assert "\r\x1b[2K[" in text and " 50.0%" in text and "100.0%" in text and text.endswith("\n")


def test_old_huggingface_incomplete_files_are_removed(tmp_path):
    cache = tmp_path / "loras/.cache/huggingface/download"
    cache.mkdir(parents=True)
    old, fresh = cache / "a.bin.abc.incomplete", cache / "b.bin.def.incomplete"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert clean_hf_orphans(tmp_path, {"loras", "vae"}) == [old]
    assert fresh.exists()


def test_download_concurrency_bounds_files_in_flight(hub, models):
    hub.rate = 1_000_000
    names = [f"f{i}.bin" for i in range(5)]
    for i, name in enumerate(names):
        hub.add_file("org/repo", name, payload(200_000, seed=i))
    plan = make_plan(*(hub_file("org/repo", n, f"loras/{n}", 200_000) for n in names))
    assert fetch_plan(plan, make_settings(hub, models, DOWNLOAD_CONCURRENCY="2"), tuning=FAST).ok
    data = [r for r in hub.requests(origin="cdn")]
    peak = max(len({r.key for r in data if r.started <= t < r.ended}) for t in (r.started for r in data))
    assert peak == 2


def test_download_timeout_stops_a_file_and_keeps_its_partial(hub, models):
    hub.rate = 100_000
    hub.add_file("org/repo", "slow.bin", payload(1_000_000))
    plan = make_plan(hub_file("org/repo", "slow.bin", "loras/slow.bin", 1_000_000))
    report = fetch_plan(plan, make_settings(hub, models, DOWNLOAD_TIMEOUT="1"), tuning=FAST)
    assert "DOWNLOAD_TIMEOUT=1" in report.failed["loras/slow.bin"]
    assert (models / "loras/slow.bin.partial").exists() and not (models / "loras/slow.bin").exists()
