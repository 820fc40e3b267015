"""`supervisor fetch` as a real process: SIGKILL and resume, two processes on one file, a full disk, SIGTERM, the
dry run, and the token kept out of every line of output."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from supervisor.fetch.store import record_path
from tests.fetch.conftest import REPO_ROOT, TOKEN, payload, sha256, subprocess_env, write_catalog

MB = 1_000_000
DEST = "loras/big.safetensors"


def start(hub, models, catalog, *args, **env):
    return subprocess.Popen([sys.executable, "-m", "supervisor", "fetch", *args], cwd=REPO_ROOT,
                            env=subprocess_env(hub, models, catalog, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def events(err: str, name: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in found if name is None or e.get("event") == name]


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def record_done(models: Path, dest: str) -> int:
    try:
        data = json.loads(record_path(models, dest).read_text())
    except (OSError, ValueError):
        return 0
    return sum(b - a for a, b in data["done"])


@pytest.fixture
def big(hub, tmp_path):
    data = payload(24 * MB, seed=21)
    hub.add_file("org/repo", "big.safetensors", data)
    catalog = write_catalog(tmp_path / "catalog.toml", {
        "big": {"repo": "org/repo", "path": "big.safetensors", "dest": DEST, "size": len(data)}})
    return data, catalog


def test_sigkill_mid_download_resumes_from_its_bytes(hub, models, big):
    data, catalog = big
    hub.rate = 3 * MB  # per connection
    proc = start(hub, models, catalog)
    try:
        assert wait_for(lambda: record_done(models, DEST) >= 0.4 * len(data)), "never reached 40 %"
    finally:
        proc.kill()
        proc.wait(10)
    kept = record_done(models, DEST)
    assert kept >= 0.4 * len(data) and not (models / DEST).exists()
    first_run = hub.bytes_sent()
    hub.reset_log()
    hub.rate = 0
    code, _, err = finish(start(hub, models, catalog))
    assert code == 0, err
    assert sha256((models / DEST).read_bytes()) == sha256(data)
    (resume,) = events(err, "fetch.resume")
    assert resume["bytes_done"] >= kept  # the killed run's last record, or a later one
    second_run = hub.bytes_sent()
    assert second_run <= len(data) - kept + 4 * MB, (second_run, kept)
    assert all(r.range for r in hub.requests(origin="cdn")), "every request of the second run is ranged"
    assert first_run + second_run < 1.5 * len(data)
    assert not list((models / ".supervisor/locks").rglob("*.lock"))


def test_two_processes_download_a_file_once(hub, models, big):
    data, catalog = big
    hub.pause()  # the first process holds the lock and waits for bytes until the second one is waiting too
    first = start(hub, models, catalog, DOWNLOAD_STALL_TIMEOUT="60")
    try:
        assert wait_for(lambda: hub.waiting() > 0), "the first process never asked for the bytes"
        second = start(hub, models, catalog, DOWNLOAD_STALL_TIMEOUT="60")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(second.stderr), daemon=True)
        reader.start()
        assert wait_for(lambda: any('"fetch.waiting"' in line for line in lines)), "the second never waited"
    finally:
        hub.resume()
    (code1, _, err1) = finish(first)
    second.wait(60)
    reader.join(10)
    code2, err2 = second.returncode, "".join(lines)
    assert code1 == 0 and code2 == 0, err1 + err2
    assert sha256((models / DEST).read_bytes()) == sha256(data)
    assert hub.bytes_sent() < 1.2 * len(data), "downloaded twice"
    waiting = events(err2, "fetch.waiting")
    assert waiting and "pid" in waiting[0]["owner"]
    assert any(e.get("how") == "by_other" for e in events(err2, "fetch.verified"))


def test_a_dead_owners_lock_and_partial_are_taken_over(hub, models, big):
    data, catalog = big
    hub.rate = 3 * MB
    proc = start(hub, models, catalog)
    assert wait_for(lambda: record_done(models, DEST) > 4 * MB)
    proc.kill()
    proc.wait(10)
    assert list((models / ".supervisor/locks").rglob("*.lock")), "SIGKILL leaves the lock file behind"
    hub.rate = 0
    code, _, err = finish(start(hub, models, catalog))
    assert code == 0, err
    assert events(err, "fetch.lock_broken") and events(err, "fetch.resume")


def test_sigterm_stops_promptly_keeping_the_partial(hub, models, big):
    data, catalog = big
    hub.rate = 1 * MB
    proc = start(hub, models, catalog, DOWNLOAD_STALL_TIMEOUT="60")
    assert wait_for(lambda: record_done(models, DEST) > 2 * MB)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGTERM and time.monotonic() - sent < 15  # about a second; slack for a busy CI
    assert events(err, "fetch.interrupted") and record_done(models, DEST) > 2 * MB
    assert not (models / DEST).exists() and not list((models / ".supervisor/locks").rglob("*.lock"))


def test_dry_run_prints_the_list_and_total_and_downloads_nothing(hub, models, big):
    data, catalog = big
    code, out, err = finish(start(hub, models, catalog, "--dry-run"))
    assert code == 0, err
    assert DEST in out and "total: 22.9 MiB to download" in out
    assert hub.requests(origin="cdn") == [] and not (models / "loras").exists()
    code, out, _ = finish(start(hub, models, catalog, DRY_RUN="true"))
    assert code == 0 and "total: 22.9 MiB" in out


def test_the_token_appears_in_no_line_of_output(hub, models, tmp_path):
    hub.add_file("org/gated", "a.safetensors", payload(300_000))
    hub.add_file("org/private", "b.safetensors", payload(300_000))
    hub.gate("org/gated", TOKEN)
    hub.gate("org/private", "hf_SomeoneElsesToken00000000000000")
    hub.fault("reset", "org/gated/a.safetensors", after=1000, times=2)
    hub.fault("status", "org/gated/a.safetensors", status=503, times=1, on="meta")
    catalog = write_catalog(tmp_path / "catalog.toml", {
        "a": {"repo": "org/gated", "path": "a.safetensors", "dest": "loras/a.safetensors", "size": 300_000},
        "b": {"repo": "org/private", "path": "b.safetensors", "dest": "loras/b.safetensors", "size": 300_000}})
    code, out, err = finish(start(hub, models, catalog, HF_TOKEN=TOKEN, LOG_LEVEL="debug"))
    assert code == 2  # org/private refuses this token: an access problem
    assert (models / "loras/a.safetensors").exists()
    assert "org/private" in err and events(err, "fetch.retry")
    assert TOKEN not in out + err
    assert TOKEN[3:20] not in out + err
    for marker in (models / ".supervisor").rglob("*"):
        if marker.is_file():
            assert TOKEN not in marker.read_text(errors="replace")


def _namespace_prefix() -> list[str]:
    """A command prefix that gives the child a private mount namespace where it may mount a tmpfs."""
    if not shutil.which("unshare"):
        pytest.skip("no `unshare` command: cannot make a private mount namespace for a small file system")
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>&1 || "
                                                    "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True,
                               text=True)
        if probe.returncode == 0:
            return prefix
    pytest.skip(f"this sandbox allows no tmpfs mount in a private namespace: {probe.stdout.strip()}")


def test_a_full_disk_stops_cleanly_and_says_how_much_space_is_missing(hub, models, big, tmp_path):
    data, catalog = big
    prefix = _namespace_prefix()
    hub.pause()  # no byte is sent until the filler is in place: the disk fills during the download, never before
    filled = tmp_path / "filled"
    env = subprocess_env(hub, models, catalog, DOWNLOAD_STALL_TIMEOUT="60")
    # 30 MB of tmpfs: the 24 MB file fits when fetch checks; once its .partial exists (the check is behind it), a
    # filler takes 16 MB, and only then does the Hub send the bytes.
    script = (f'mount -t tmpfs -o size=30m tmpfs "{models}" || exit 97\n'
              f'(until [ -e "{models}/loras/big.safetensors.partial" ]; do sleep 0.02; done; '
              f'head -c 16000000 /dev/zero > "{models}/filler"; touch "{filled}") &\n'
              f'{sys.executable} -m supervisor fetch; rc=$?\n'
              f'ls -a "{models}/loras"; wait; exit $rc\n')
    proc = subprocess.Popen([*prefix, "sh", "-c", script], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: filled.exists() or proc.poll() is not None, timeout=60)
    finally:
        hub.resume()
    out, err = proc.communicate(timeout=60)
    assert filled.exists(), err
    assert proc.returncode == 1, err
    assert "disk full" in err and "free at least" in err and "bytes" in err
    assert "big.safetensors.partial" in out and "\nbig.safetensors\n" not in out
    assert not events(err, "fetch.done") and events(err, "fetch.summary")[0]["ok"] is False
    assert not (models / "loras").exists(), "the tmpfs was private to the child"


def test_offline_cli_lists_what_is_missing(hub, models, big):
    data, catalog = big
    code, out, err = finish(start(hub, models, catalog, HF_HUB_OFFLINE="1"))
    assert code == 1 and DEST in err and "HF_HUB_OFFLINE" in err and "22.9 MiB" in err
    assert hub.log == []


def test_a_read_only_models_dir_is_an_error_naming_models_dir(hub, models, big):
    data, catalog = big
    prefix = _namespace_prefix()
    env = subprocess_env(hub, models, catalog)
    script = (f'mount --bind "{models}" "{models}" && mount -o remount,bind,ro "{models}" || exit 97\n'
              f'exec {sys.executable} -m supervisor fetch\n')
    proc = subprocess.run([*prefix, "sh", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode == 97:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    (error,) = events(proc.stderr, "error")
    assert "MODELS_DIR" in error["message"] and "read-only" in error["message"]
    assert not hub.requests(origin="cdn")
