"""Exit classification from code, signal and the last log lines (texts as ComfyUI and torch print them), and the
restart policy built on it."""

from __future__ import annotations

import signal

import pytest

from supervisor.run import exits
from supervisor.run.exits import classify
from supervisor.run.restart import RestartPolicy

CUDA_OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of "
            "79.18 GiB of which 6.66 GiB is free.")
TRACEBACK = ["Traceback (most recent call last):", '  File "/opt/ComfyUI/main.py", line 380, in <module>']


def c(code=None, sig=None, lines=(), **kw):
    returncode = 128 + sig if sig else code
    return classify(code=code, sig=sig, returncode=returncode, lines=list(lines), **kw)


@pytest.mark.parametrize("lines, code, sig, klass", [
    ([*TRACEBACK, CUDA_OOM], 1, None, exits.OOM),
    (["Got an OOM, unloading all loaded models.", "some later line"], 1, None, exits.OOM),
    (["RuntimeError: CUDA error: out of memory"], 1, None, exits.OOM),
    ([], None, signal.SIGKILL, exits.KILLED),  # `kill -9` with no OOM evidence: no downgrade
    ([], 137, None, exits.KILLED),  # the same through a shell launcher
    (["usage: main.py [-h] ...", "main.py: error: unrecognized arguments: --medvram --cpu-text-encoder"], 2, None,
     exits.BAD_ARGUMENTS),
    ([*TRACEBACK, "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                  "installed a driver from http://www.nvidia.com/Download/index.aspx"], 1, None, exits.DRIVER),
    (["RuntimeError: No CUDA GPUs are available"], 1, None, exits.DRIVER),
    (["RuntimeError: The NVIDIA driver on your system is too old (found version 12040)."], 1, None, exits.DRIVER),
    (["OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8190): address already in use"],
     1, None, exits.PORT_IN_USE),
    (["sh: 1: exec: /opt/venv/bin/python: not found"], 127, None, exits.EXEC_FAILED),
    (["sh: 1: /opt/launch.sh: Permission denied"], 126, None, exits.EXEC_FAILED),  # not executable
    ([*TRACEBACK, "ModuleNotFoundError: No module named 'requests'"], 1, None, exits.CRASH),
    ([], None, signal.SIGSEGV, exits.CRASH),
    (["Stopped server"], 0, None, exits.STOPPED),
])
def test_classes(lines, code, sig, klass):
    assert c(code, sig, lines).klass == klass


def test_bad_arguments_name_the_flag():
    info = c(2, None, ["main.py: error: unrecognized arguments: --medvram"])
    assert info.flag == "--medvram" and "--medvram" in info.message and "COMFYUI_ARGS" in info.advice
    info = c(2, None, ["main.py: error: argument --preview-method: invalid choice: 'fast'"])
    assert info.flag == "--preview-method" and "invalid choice" in info.message


def test_what_the_supervisor_did_wins():
    # Killed by us with SIGKILL is not the OOM killer; a signal we forwarded is not a crash; a reboot is a reboot.
    assert c(None, signal.SIGKILL, killed_for=exits.HANG).klass == exits.HANG
    assert c(None, signal.SIGTERM, [CUDA_OOM], killed_for=exits.STEP_DOWN).klass == exits.STEP_DOWN
    assert c(None, signal.SIGHUP, [CUDA_OOM], forwarded={signal.SIGHUP}).klass == exits.SIGNAL
    assert c(0, None, ["Restarting..."], reboot_requested=True).klass == exits.REBOOT
    # A leftover reboot marker does not turn a crash into a free restart.
    crashed = c(1, None, [*TRACEBACK, "RuntimeError: boom"], reboot_requested=True)
    assert crashed.klass == exits.CRASH
    assert policy().decide(crashed, 0).failure
    oom_killed = c(None, signal.SIGKILL, oom_kills=1)
    assert oom_killed.klass == exits.OOM and oom_killed.evidence == ("cgroup oom_kill counter +1",)


def test_the_message_is_the_last_meaningful_line():
    info = c(1, None, [*TRACEBACK, "ValueError: bad node", '  File "x.py", line 1'])
    assert info.message == "ValueError: bad node"
    assert info.to_dict()["class"] == "crash" and info.to_dict()["returncode"] == 1


def policy(**kw) -> RestartPolicy:
    args = dict(initial=1.0, maximum=8.0, stable_after=60.0, max_failures=5, window=100.0) | kw
    return RestartPolicy(**args)


def crash(uptime=1.0, klass=exits.CRASH):
    return exits.ExitInfo(klass=klass, returncode=1, code=1, signal=None, message="", uptime=uptime)


def test_backoff_doubles_up_to_the_cap_and_gives_up_after_k_failures_in_the_window():
    p = policy(max_failures=6)
    decisions = [p.decide(crash(), now=t) for t in range(6)]
    assert [d.delay for d in decisions[:5]] == [1, 2, 4, 8, 8]
    assert all(d.restart for d in decisions[:5])
    assert not decisions[5].restart and "6 failures" in decisions[5].reason


def test_failures_outside_the_window_are_forgotten():
    p = policy(max_failures=3, window=10.0)
    assert p.decide(crash(), now=0).restart
    assert p.decide(crash(), now=1).restart
    assert p.decide(crash(), now=20).restart  # the first two are older than the window
    assert p.failures(now=20) == 1


def test_stable_uptime_resets_the_backoff():
    p = policy()
    p.decide(crash(), 0)
    p.decide(crash(), 1)
    assert p.decide(crash(uptime=61), 2).delay == 1.0


def test_fatal_and_free_classes():
    p = policy()
    for klass in (exits.BAD_ARGUMENTS, exits.DRIVER, exits.EXEC_FAILED):
        assert p.decide(crash(klass=klass), 0).restart is False
    for klass in (exits.REBOOT, exits.SIGNAL, exits.STEP_DOWN):
        d = p.decide(crash(klass=klass), 0)
        assert d.restart and d.delay == 0 and not d.failure
    assert p.failures(0) == 0


def test_what_the_supervisor_did_is_told_as_it_happened():
    # A graceful stop (exit 0 after the SIGINT we forwarded) is no kill; the grace running out is.
    graceful = c(0, None, ["Stopped server"], killed_for=exits.SHUTDOWN)
    assert graceful.klass == exits.SHUTDOWN and "killed" not in graceful.message
    assert graceful.message == "exited with code 0 after the supervisor asked it to stop (shutdown)"
    assert c(None, signal.SIGKILL, killed_for=exits.SHUTDOWN).message == \
        "killed by the supervisor with SIGKILL (shutdown)"
    assert c(None, signal.SIGTERM, killed_for=exits.HANG).message == "ended by SIGTERM from the supervisor (hang)"
