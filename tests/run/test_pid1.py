"""PID-1 duties, tested as a real PID 1 (its own PID namespace via `unshare --pid --fork --mount-proc`) and as a plain
child that made itself a child subreaper: orphans reaped, signals forwarded to ComfyUI's group, exit codes passed
through, children started with a clean signal state, leftovers stopped on shutdown."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from .conftest import zombies_of

pytestmark = pytest.mark.timeout(60)
BOTH = pytest.mark.parametrize("pid1", [True, False], ids=["pid1", "subreaper"])


def _sigset(hex_mask: str) -> set[int]:
    value = int(hex_mask, 16)
    return {n for n in range(1, 65) if value & (1 << (n - 1))}


@BOTH
def test_orphans_are_reaped_and_never_steal_comfyuis_status(pod, supervisor, pid1):
    pod.env.update(STANDIN_MODE="orphans:6,term_exit:5")
    run = supervisor(pod, pid1=pid1)
    run.wait_for("supervise.ready")
    assert run.named("init.ready")[0]["pid1"] is pid1
    assert run.named("init.ready")[0]["subreaper"] is (not pid1)
    pod.wait_record("orphan", count=6)
    deadline = time.monotonic() + 5
    while True:
        reaped = run.status()["supervisor"]["orphans_reaped"]
        if reaped >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reaped >= 6
    assert zombies_of(run.pid) == []
    # Reaping the orphans did not take ComfyUI's own status: its exit code 5 (on SIGTERM) comes through.
    run.send(signal.SIGTERM)
    assert run.wait() == 5


@BOTH
def test_hup_usr1_usr2_reach_comfyuis_whole_group(pod, supervisor, pid1):
    pod.env.update(STANDIN_MODE="trap_signals,group_child")
    run = supervisor(pod, pid1=pid1)
    run.wait_for("supervise.ready")
    pod.wait_record("group_child_started")
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        run.send(sig)
        run.wait_for("supervise.forwarded", signal=sig.name)
        pod.wait_record("signal", signal=sig.name, who="comfyui")
        pod.wait_record("signal", signal=sig.name, who="group_child")
    assert run.named("comfyui.exited") == []  # it trapped them; the supervisor kept running too
    run.send(signal.SIGTERM)
    pod.wait_record("signal", signal="SIGTERM", who="group_child")
    assert run.wait() == 143


def test_a_forwarded_signal_that_ends_comfyui_restarts_it_without_counting_a_failure(pod, supervisor):
    pod.env.update(RESTART_MAX="1", RESTART_BACKOFF_INITIAL="10")
    run = supervisor(pod, pid1=True)
    run.wait_for("supervise.ready")
    run.send(signal.SIGHUP)  # ComfyUI has no handler: SIGHUP ends it
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "signal" and exited["signal"] == "SIGHUP" and exited["returncode"] == 129
    scheduled = run.wait_for("supervise.restart_scheduled")
    assert scheduled["delay_s"] == 0 and scheduled["failure"] is False
    run.wait_for("supervise.ready", count=2)
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_death_by_a_signal_passes_through_as_128_plus_n(pod, supervisor):
    pod.env.update(STANDIN_MODE="kill_self_after:0.2:SIGSEGV", RESTART_MAX="1")
    run = supervisor(pod, pid1=True)
    assert run.wait() == 128 + signal.SIGSEGV
    exited = run.wait_for("comfyui.exited")
    assert exited["class"] == "crash" and exited["signal"] == "SIGSEGV"


def test_children_start_with_an_empty_mask_and_default_dispositions(pod, supervisor):
    # The launcher leaves SIGINT and SIGQUIT ignored (like `cmd &` in a script) and blocks USR1 and TERM.
    launcher = [sys.executable, "-c",
                "import os, signal, sys\n"
                "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
                "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})\n"
                "os.execvp(sys.argv[1], sys.argv[1:])\n"]
    run = supervisor(pod, launcher=launcher)
    run.wait_for("supervise.ready")
    (start,) = pod.records("start")
    assert _sigset(start["SigBlk"]) == set()
    ignored = _sigset(start["SigIgn"])
    assert not ignored & {signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                          signal.SIGUSR2, signal.SIGCHLD}
    # Left: what the stand-in's own Python ignores at start, and glibc's two internal real-time signals, which its
    # posix_spawn sets to SIG_IGN in every child (glibc installs its handlers for them itself when it needs them).
    assert ignored <= {signal.SIGPIPE, signal.SIGXFSZ, 32, 33}
    # The supervisor unblocked TERM for itself and ComfyUI stops gracefully on SIGINT again.
    run.send(signal.SIGINT)
    assert run.wait() == 0


@BOTH
def test_leftovers_that_left_the_group_are_stopped_on_shutdown(pod, supervisor, pid1):
    pod.env.update(STANDIN_MODE="escapee")
    run = supervisor(pod, pid1=pid1)
    run.wait_for("supervise.ready")
    pod.wait_record("escapee_pid")
    run.send(signal.SIGTERM)
    assert run.wait() == 143
    pod.wait_record("signal", signal="SIGTERM", who="escapee", timeout=5)
    leftovers = run.wait_for("supervise.leftovers")
    assert "ComfyUI left behind" not in leftovers["message"]  # they may be SSH sessions: say what they are
    assert leftovers["names"] and len(leftovers["names"]) == len(leftovers["pids"])


def test_exit_codes_pass_through(pod, supervisor):
    pod.env.update(STANDIN_MODE="crash_after:0.2:42", RESTART_MAX="1")
    run = supervisor(pod, pid1=True)
    assert run.wait() == 42
    assert run.wait_for("supervise.exit")["code"] == 42


def test_sigquit_stops_too_and_is_forwarded_as_sigquit(pod, supervisor):
    run = supervisor(pod, pid1=True)
    run.wait_for("supervise.ready")
    run.send(signal.SIGQUIT)
    assert run.wait() == 128 + signal.SIGQUIT
    assert run.wait_for("supervise.stopping")["signal"] == "SIGQUIT"
