"""Why did ComfyUI exit? One class per exit, from its code, its signal, its last log lines and what we did to it.

The last lines are evidence of this exit only: out-of-memory lines of a prompt that ComfyUI survived (it catches
the error, logs "Got an OOM" and goes on) are dropped by the unit when the prompt ends (unit.py, `on_line`), so a
later reboot, `kill -9` or crash is classified by what happened then.

Classes (evidence -> what the restart policy in restart.py does):

    oom              "CUDA out of memory" / torch.OutOfMemoryError / "Got an OOM" in the last lines, or SIGKILL /
                     exit 137 while the cgroup's oom_kill counter grew (the kernel's OOM killer)
                     -> restart on the next lower step of the plan
    killed           SIGKILL / exit 137 from someone else (`kill -9`, no OOM evidence) -> restart with backoff
    bad_arguments    exit 2 (argparse), the flag quoted                          -> never restarted: exit 2
    driver           no NVIDIA driver / no CUDA GPU / driver too old or mismatched -> never restarted
    exec_failed      126/127: command not found or not executable                 -> never restarted
    port_in_use      "address already in use" / [Errno 98]                        -> restart with backoff
    reboot           ComfyUI-Manager's marker ($__COMFY_CLI_SESSION__.reboot), exit 0 -> at once, not a failure
    signal           ended by a signal we forwarded (HUP, USR1, USR2)             -> at once, not a failure
    hang, startup_timeout   we killed it: liveness failed / never answered in time -> restart with backoff
    step_down        we restarted it on a lower rung after out-of-memory errors inside prompts -> at once, not a
                     failure
    stopped          exit 0 without a reboot request                              -> restart with backoff
    crash            anything else                                                -> restart with backoff
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Iterable

from .init import signal_name

OOM = "oom"
BAD_ARGUMENTS = "bad_arguments"
DRIVER = "driver"
EXEC_FAILED = "exec_failed"
PORT_IN_USE = "port_in_use"
REBOOT = "reboot"
SIGNAL = "signal"
HANG = "hang"
STARTUP_TIMEOUT = "startup_timeout"
STOPPED = "stopped"
CRASH = "crash"
KILLED = "killed"
SHUTDOWN = "shutdown"
STEP_DOWN = "step_down"

_CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|Got an OOM|CUDA error: out of memory|HIP out of memory",
                       re.IGNORECASE)
_DRIVER = re.compile(
    r"Found no NVIDIA driver|No CUDA GPUs are available|CUDA driver version is insufficient|"
    r"NVIDIA driver on your system is too old|Driver/library version mismatch|cudaErrorInsufficientDriver|"
    r"no kernel image is available for execution|forward compatibility was attempted on non supported HW|"
    r"libcuda\.so[.\d]*: cannot open shared object file|CUDA unknown error")
_PORT = re.compile(r"\[Errno 98\]|address already in use", re.IGNORECASE)
_ARGPARSE = re.compile(r"error: (?:unrecognized arguments: (?P<unknown>.+)|argument (?P<flag>[-\w/]+): (?P<why>.+)|"
                       r"(?P<other>.+))")
_NOISE = re.compile(r"^\s*(File \"|\^+$|~+$|During handling|The above exception|Traceback)")

ADVICE = {
    OOM: "out of memory: the next start uses a lighter step of the plan if one is left (OOM_DOWNGRADE)",
    BAD_ARGUMENTS: "ComfyUI rejected its command line: fix COMFYUI_ARGS (or COMFYUI_COMMAND); restarting cannot help",
    DRIVER: "the GPU driver does not match this image's CUDA build (or no GPU is visible): choose a pod with a newer "
            "driver or an image built for the host's CUDA version; restarting cannot help",
    EXEC_FAILED: "the ComfyUI command could not be started: check COMFYUI_DIR, COMFYUI_PYTHON and COMFYUI_COMMAND",
    PORT_IN_USE: "another process holds ComfyUI's port: stop it or change COMFYUI_PORT",
}


@dataclass(frozen=True)
class ExitInfo:
    """One classified exit of ComfyUI."""

    klass: str
    returncode: int  # exit code, or 128+N for signal N
    code: int | None
    signal: int | None
    message: str
    uptime: float
    flag: str | None = None  # bad_arguments: the flag ComfyUI named
    evidence: tuple[str, ...] = field(default=())

    @property
    def advice(self) -> str:
        return ADVICE.get(self.klass, "")

    def to_dict(self) -> dict[str, object]:
        return {"class": self.klass, "returncode": self.returncode, "code": self.code,
                "signal": signal_name(self.signal) or None, "message": self.message, "uptime_s": round(self.uptime, 3),
                "flag": self.flag, "evidence": list(self.evidence), "advice": self.advice or None}


def classify(*, code: int | None, sig: int | None, returncode: int, lines: Iterable[str], uptime: float = 0.0,
             killed_for: str | None = None, forwarded: Iterable[int] = (), reboot_requested: bool = False,
             oom_kills: int = 0) -> ExitInfo:
    """Classify one exit. `killed_for` is why we killed it ourselves (hang, startup_timeout, shutdown), if we did;
    `forwarded` the signals we passed on to it; `oom_kills` how much the cgroup's oom_kill counter grew."""
    tail = [line for line in lines if line.strip()]
    message = _last_message(tail)

    def info(klass: str, msg: str = message, flag: str | None = None, evidence: tuple[str, ...] = ()) -> ExitInfo:
        return ExitInfo(klass=klass, returncode=returncode, code=code, signal=sig, message=msg[:500], uptime=uptime,
                        flag=flag, evidence=evidence)

    if killed_for:
        why = killed_for.replace("_", " ")
        if sig == signal.SIGKILL:
            return info(killed_for, f"killed by the supervisor with SIGKILL ({why})")
        if sig is not None:
            return info(killed_for, f"ended by {signal_name(sig)} from the supervisor ({why})")
        return info(killed_for, f"exited with code {code} after the supervisor asked it to stop ({why})")
    if sig is not None and sig in set(forwarded):
        return info(SIGNAL, f"ended by {signal_name(sig)}, forwarded by the supervisor")
    oom_line = _find(tail, _CUDA_OOM)
    if oom_line:
        return info(OOM, oom_line, evidence=(oom_line,))
    if sig == signal.SIGKILL or returncode == 137:
        # Only the counter tells the OOM killer from an operator's `kill -9`; a downgrade for the latter would
        # silently make the pod slower.
        if oom_kills:
            return info(OOM, "killed by the kernel's out-of-memory killer (host RAM)",
                        evidence=(f"cgroup oom_kill counter +{oom_kills}",))
        return info(KILLED, "killed by SIGKILL from outside the supervisor, with no out-of-memory evidence")
    if code == 0 and reboot_requested:
        return info(REBOOT, "ComfyUI-Manager asked for a restart")
    if code == 2:
        flag, msg = _argparse_error(tail)
        return info(BAD_ARGUMENTS, msg or message, flag=flag)
    if code in (126, 127):
        return info(EXEC_FAILED, message or ("command not found" if code == 127 else "command not executable"))
    driver_line = _find(tail, _DRIVER)
    if driver_line:
        return info(DRIVER, driver_line, evidence=(driver_line,))
    port_line = _find(tail, _PORT)
    if port_line:
        return info(PORT_IN_USE, port_line, evidence=(port_line,))
    if code == 0:
        return info(STOPPED, "ComfyUI exited with code 0 on its own")
    if sig is not None:
        return info(CRASH, f"killed by {signal_name(sig)}" + (f"; last line: {message}" if message else ""))
    return info(CRASH, message or f"exit code {code}")


def oom_kill_count() -> int:
    """The cgroup v2 `oom_kill` counter of this container (0 if unreadable)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _find(lines: list[str], pattern: re.Pattern[str]) -> str:
    for line in reversed(lines):
        if pattern.search(line):
            return line.strip()
    return ""


def _last_message(lines: list[str]) -> str:
    for line in reversed(lines):
        if not _NOISE.match(line):
            return line.strip()
    return lines[-1].strip() if lines else ""


def _argparse_error(lines: list[str]) -> tuple[str | None, str]:
    for line in reversed(lines):
        match = _ARGPARSE.search(line)
        if not match:
            continue
        if match.group("unknown"):
            first = match.group("unknown").split()[0]
            return first, f"unrecognized argument {match.group('unknown').strip()}"
        if match.group("flag"):
            return match.group("flag").split("/")[0], f"argument {match.group('flag')}: {match.group('why').strip()}"
        return None, match.group("other").strip()
    return None, ""
