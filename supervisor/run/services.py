"""Side services of the template: sshd (PUBLIC_KEY), JupyterLab (JUPYTER_PASSWORD), custom-node update
(UPDATE_NODES_ON_START), and on a serverless worker (SERVERLESS=true) the RunPod handler instead of sshd/Jupyter.
They are children of the supervisor like ComfyUI: own session, output logged as events (source sshd / jupyter /
git / worker) and to LOG_DIR/<name>.log, restarted with backoff when they die, stopped with ComfyUI. None of them
can stop ComfyUI from starting: a missing program is a warning, a crash a restart.

Secrets: JupyterLab gets its token through the JUPYTER_TOKEN environment variable (read by jupyter_server),
never on its command line; side services get the same environment as ComfyUI otherwise (credentials removed
unless COMFYUI_PASS_SECRETS=true). SSH sessions get the container's environment from a profile script, always
without credentials; sshd accepts keys only (no passwords).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import structlog

from .init import Child

log = structlog.get_logger("services")  # lazy: uses the configuration at each call
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0
NODE_UPDATE_DEADLINE = 60.0  # ComfyUI waits at most this long for `git pull` of the custom nodes
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
SSH_DIR = Path("/etc/ssh")  # where sshd's host keys are
# Sourced by every login shell (an SSH session): the container's environment, which sshd does not pass on.
PROFILE_SCRIPT = Path("/etc/profile.d/comfyui-pod-env.sh")
# Per-shell or per-session variables that must not be frozen into the profile script.
SESSION_VARIABLES = {"HOME", "PWD", "OLDPWD", "SHLVL", "_", "TERM", "HOSTNAME", "USER", "LOGNAME", "SHELL",
                     "MAIL", "SSH_AUTH_SOCK", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Service:
    """A long-running side process. `pre` commands run once, in order, before the first start."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    cwd: str | None = None
    pre: list[tuple[str, ...]] = field(default_factory=list)
    child: Child | None = None
    state: str = "pending"  # pending | preparing | running | backoff | stopped
    restarts: int = 0
    delay: float = BACKOFF_INITIAL
    last_exit: str = ""

    def next_command(self) -> tuple[tuple[str, ...], bool]:
        """(argv, is_pre): the next pre command if any is left, else the service itself."""
        if self.pre:
            return self.pre[0], True
        return self.argv, False

    def on_exit(self, child: Child, stopping: bool) -> float | None:
        """Seconds until the next start, or None when it should stay down."""
        self.child = None
        if stopping:
            self.state = "stopped"
            return None
        if self.pre and child.argv == self.pre[0]:
            self.pre.pop(0)
            if child.returncode:
                log.warning("services.prepare_failed", service=self.name, argv=list(child.argv),
                            returncode=child.returncode)
            return 0.0
        self.last_exit = child.describe()
        if child.uptime >= STABLE_AFTER:
            self.delay = BACKOFF_INITIAL
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_MAX)
        self.restarts += 1
        self.state = "backoff"
        log.warning("services.exited", service=self.name, pid=child.pid, exit=self.last_exit,
                    uptime_s=round(child.uptime, 3), restart_in_s=delay, restarts=self.restarts)
        return delay

    def to_dict(self) -> dict[str, object]:
        return {"state": self.state, "pid": self.child.pid if self.child else None, "restarts": self.restarts,
                "last_exit": self.last_exit or None, "argv": list(self.argv)}


def which(program: str, environ: Mapping[str, str]) -> str | None:
    path = os.pathsep.join([environ.get("PATH", os.defpath), *SBIN])
    return shutil.which(program, path=path)


def home_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("HOME"):
        return Path(environ["HOME"])
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def install_public_key(key: str, home: Path) -> Path:
    """Append PUBLIC_KEY to ~/.ssh/authorized_keys once, with the permissions sshd insists on."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    keys = ssh / "authorized_keys"
    existing = keys.read_text().splitlines() if keys.exists() else []
    new = [line.strip() for line in key.replace("\\n", "\n").splitlines() if line.strip()]
    missing = [line for line in new if line not in existing]
    if missing:
        with keys.open("a") as f:
            if existing and not keys.read_text().endswith("\n"):
                f.write("\n")
            f.write("\n".join(missing) + "\n")
    os.chmod(keys, 0o600)
    return keys


def write_session_profile(session_env: Mapping[str, str], python: str, path: Path | None = None) -> Path:
    """The container's environment (no credentials: `session_env` has them removed) as `export` lines for login
    shells, with ComfyUI's Python first on PATH, the way RunPod images pass theirs to SSH sessions."""
    path = path or PROFILE_SCRIPT
    lines = ["# Written by comfyui-pod-supervisor at each start: the container's environment for SSH sessions",
             "# (credentials such as HF_TOKEN are left out on purpose)."]
    for name in sorted(session_env):
        if name in SESSION_VARIABLES or not _NAME.fullmatch(name):
            continue
        lines.append(f"export {name}={shlex.quote(session_env[name])}")
    bin_dir = str(Path(python).parent)
    lines.append(f'case ":$PATH:" in *":{bin_dir}:"*) ;; *) export PATH={shlex.quote(bin_dir)}:"$PATH" ;; esac')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def sshd(settings, environ: Mapping[str, str], env: Mapping[str, str],
         session_env: Mapping[str, str] | None = None) -> Service | None:
    if not settings.public_key:
        return None
    binary = which("sshd", environ)
    if not binary:
        log.warning("services.sshd_missing", message="PUBLIC_KEY is set but this image has no sshd; SSH is off")
        return None
    keys = install_public_key(settings.public_key, home_dir(environ))
    log.info("services.ssh_key_installed", path=str(keys))
    pre: list[tuple[str, ...]] = []
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    except OSError:
        pass
    keygen = which("ssh-keygen", environ)
    if keygen and not list(SSH_DIR.glob("ssh_host_*_key")):
        pre.append((keygen, "-A"))  # host keys, once per container
    try:
        profile = write_session_profile(session_env if session_env is not None else env, settings.python)
        log.info("services.ssh_environment", path=str(profile))
    except OSError as exc:
        log.warning("services.ssh_environment_failed", path=str(PROFILE_SCRIPT), error=str(exc),
                    message="SSH sessions start without the container's variables")
    # -D: stay in the foreground (a child we supervise); -e: log to stderr (which we read). Keys only: the image
    # has no passwords to offer, and a password prompt on a public port only invites guessing.
    argv = (binary, "-D", "-e", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no")
    return Service(name="sshd", argv=argv, env=env, pre=pre)


def jupyter(settings, environ: Mapping[str, str], env: Mapping[str, str]) -> Service | None:
    if not settings.jupyter_password:
        return None
    binary = which("jupyter", environ)
    if not binary:
        log.warning("services.jupyter_missing",
                    message="JUPYTER_PASSWORD is set but this image has no `jupyter`; JupyterLab is off")
        return None
    root = Path(settings.comfyui_data_dir).parent
    if not root.is_dir():
        root = Path("/")
    env = {**env, "JUPYTER_TOKEN": str(settings.jupyter_password)}
    argv = (binary, "lab", "--ip=0.0.0.0", f"--port={settings.jupyter_port}", "--no-browser", "--allow-root",
            f"--ServerApp.root_dir={root}")
    if settings.jupyter_allow_origin:  # cross-origin requests only when asked for (JUPYTER_ALLOW_ORIGIN)
        argv += (f"--ServerApp.allow_origin={settings.jupyter_allow_origin}",)
    return Service(name="jupyter", argv=argv, env=env)


def serverless_worker(settings, environ: Mapping[str, str], env: Mapping[str, str]) -> Service | None:
    """`supervisor worker`, the RunPod handler (its own process: the runpod SDK stays out of PID 1). It gets
    ComfyUI's environment plus what it needs for its jobs: the bucket's R2_* and AWS_* credentials and the RUNPOD_*
    variables the platform sets (the job queue's URLs and key)."""
    if not settings.serverless:
        return None
    from ..serverless.worker import problems

    found = problems(settings, environ)
    if found:
        log.error("services.worker_not_started", problems=[str(p) for p in found],
                  message="SERVERLESS=true but no job can reach this worker; ComfyUI runs without it")
        return None
    passed = {k: v for k, v in environ.items() if k.startswith(("R2_", "AWS_", "RUNPOD_"))}
    return Service(name="worker", argv=(sys.executable, "-m", "supervisor", "worker"), env={**env, **passed})


def node_repos(comfyui_dir: Path) -> list[Path]:
    nodes = Path(comfyui_dir) / "custom_nodes"
    if not nodes.is_dir():
        return []
    return sorted(p for p in nodes.iterdir() if (p / ".git").exists())


def git_pull_argv(git: str, repo: Path) -> tuple[str, ...]:
    # No prompt for credentials (it would hang), and give up on a stalled connection.
    return (git, "-C", str(repo), "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=20", "pull",
            "--ff-only")


def pull_result(child: Child, lines: Sequence[str]) -> str:
    if child.returncode:
        return "failed"
    return "unchanged" if any("Already up to date" in line or "Already up-to-date" in line for line in lines) \
        else "updated"
