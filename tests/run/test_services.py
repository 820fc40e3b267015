"""Side services (sshd, JupyterLab, custom-node update) as real child processes: stand-in programs named sshd,
ssh-keygen, jupyter and git on PATH record how they were started and behave like the real ones where it matters."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

PASSWORD = "jupyter-secret-password-77"

FAKE = """#!{python}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_RECORD"], "a") as f:
    f.write(json.dumps({{"name": name, "argv": sys.argv[1:], "t": time.time(), "pid": os.getpid(),
                        "token": os.environ.get("JUPYTER_TOKEN"), "hf": os.environ.get("HF_TOKEN"),
                        "prompt": os.environ.get("GIT_TERMINAL_PROMPT")}}) + "\\n")
if name == "sshd":
    marker = os.environ["FAKE_STATE"] + ".sshd-crashed"
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("fatal: stand-in sshd crashes once", file=sys.stderr, flush=True)
        sys.exit(255)
    print("Server listening on 0.0.0.0 port 22.", file=sys.stderr, flush=True)
    time.sleep(60)
elif name == "jupyter":
    print("Jupyter Server is running at: http://127.0.0.1:8888/lab?token=" + os.environ.get("JUPYTER_TOKEN", ""),
          file=sys.stderr, flush=True)
    time.sleep(60)
elif name == "git":
    repo = sys.argv[sys.argv.index("-C") + 1]
    time.sleep(0.3)
    if repo.endswith("broken"):
        print("fatal: unable to access 'https://example.invalid/broken.git/'", file=sys.stderr)
        sys.exit(1)
    print("Already up to date." if repo.endswith("same") else "Updating 1111111..2222222\\nFast-forward")
"""


@pytest.fixture
def fakes(pod, tmp_path):
    # The supervisor creates sshd's privilege separation directory; leave the machine as it was.
    run_sshd = Path("/run/sshd")
    existed = run_sshd.exists()
    yield from _fakes(pod, tmp_path)
    if not existed and run_sshd.is_dir():
        try:
            run_sshd.rmdir()
        except OSError:
            pass


def _fakes(pod, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sshd", "ssh-keygen", "jupyter", "git"):
        path = bin_dir / name
        path.write_text(FAKE.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    pod.env["PATH"] = f"{bin_dir}{os.pathsep}{pod.env['PATH']}"
    pod.env["FAKE_RECORD"] = str(tmp_path / "fake.jsonl")
    pod.env["FAKE_STATE"] = str(tmp_path / "fake")

    def records(name: str) -> list[dict]:
        path = tmp_path / "fake.jsonl"
        if not path.exists():
            return []
        return [r for r in map(json.loads, path.read_text().splitlines()) if r["name"] == name]

    yield records


def ssh_paths(tmp_path: Path, with_host_keys: bool) -> tuple[str, Path]:
    """A patch that points the supervisor at a host-key folder and a profile script of the test's own."""
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir()
    if with_host_keys:
        (ssh_dir / "ssh_host_ed25519_key").write_text("stand-in key")
    profile = tmp_path / "profile.d" / "comfyui-pod-env.sh"
    patch = (f"import supervisor.run.services as s; from pathlib import Path; s.SSH_DIR = Path({str(ssh_dir)!r}); "
             f"s.PROFILE_SCRIPT = Path({str(profile)!r})")
    return patch, profile


KEYS_ONLY = ["-D", "-e", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"]


def test_sshd_and_jupyter_are_started_supervised_and_logged(pod, supervisor, fakes, tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStandInKey test@pod"
    pod.env.update(PUBLIC_KEY=key, JUPYTER_PASSWORD=PASSWORD, JUPYTER_PORT="8899",
                   HF_TOKEN="hf_NotForJupyter0123456789abc")
    patch, _ = ssh_paths(tmp_path, with_host_keys=False)
    run = supervisor(pod, patch=patch)
    run.wait_for("supervise.ready")

    authorized = Path(pod.env["HOME"]) / ".ssh" / "authorized_keys"
    assert authorized.read_text() == key + "\n"
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert stat.S_IMODE(authorized.parent.stat().st_mode) == 0o700

    # sshd runs in the foreground with logs on stderr; it crashed once and was restarted.
    run.wait_for("services.exited", service="sshd")
    line = run.wait_for("sshd.log", where=lambda e: "Server listening" in e["line"])
    assert line["source"] == "sshd"
    started = fakes("sshd")
    assert len(started) == 2 and started[-1]["argv"] == KEYS_ONLY  # keys only: no password prompt
    # No host keys yet: generated once, before sshd starts.
    (keygen,) = fakes("ssh-keygen")
    assert keygen["argv"] == ["-A"] and keygen["t"] < started[0]["t"]

    # JupyterLab gets its token from the environment, never on its command line, and never in the logs.
    (jupyter,) = fakes("jupyter")
    assert jupyter["token"] == PASSWORD and jupyter["hf"] is None
    assert PASSWORD not in " ".join(jupyter["argv"])
    assert "--port=8899" in jupyter["argv"] and jupyter["argv"][0] == "lab"
    assert not any("allow_origin" in a for a in jupyter["argv"])  # same origin only, unless asked
    logged = run.wait_for("jupyter.log", where=lambda e: "Jupyter Server is running" in e["line"])
    assert PASSWORD not in logged["line"] and "token=***" in logged["line"]
    assert PASSWORD not in (pod.root / "logs" / "jupyter.log").read_text()

    services = run.status()["services"]
    assert services["sshd"]["state"] == "running" and services["sshd"]["restarts"] == 1
    assert services["jupyter"]["state"] == "running"

    run.send(signal.SIGTERM)
    assert run.wait() == 143  # the services were stopped with ComfyUI
    assert PASSWORD not in "".join(run.raw)


def test_existing_host_keys_are_kept_and_jupyter_origins_only_when_asked(pod, supervisor, fakes, tmp_path):
    pod.env.update(PUBLIC_KEY="ssh-ed25519 AAAA test", JUPYTER_PASSWORD=PASSWORD,
                   JUPYTER_ALLOW_ORIGIN="https://notebooks.example")
    patch, _ = ssh_paths(tmp_path, with_host_keys=True)
    run = supervisor(pod, patch=patch)
    run.wait_for("sshd.log", where=lambda e: "fatal: stand-in sshd crashes once" in e["line"])
    run.wait_for("supervise.ready")
    assert fakes("ssh-keygen") == []  # the container's host keys stay
    assert fakes("sshd")[0]["argv"] == KEYS_ONLY
    (jupyter,) = fakes("jupyter")
    assert "--ServerApp.allow_origin=https://notebooks.example" in jupyter["argv"]
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_ssh_sessions_get_the_containers_environment_without_secrets(pod, supervisor, fakes, tmp_path):
    secret = "hf_SessionSecret0123456789abcdef"
    pod.env.update(PUBLIC_KEY="ssh-ed25519 AAAA test", HF_TOKEN=secret, COMFYUI_PASS_SECRETS="true",
                   MY_SETTING="it's a value with 'quotes' and $dollars")
    patch, profile = ssh_paths(tmp_path, with_host_keys=True)
    run = supervisor(pod, patch=patch)
    run.wait_for("services.ssh_environment")
    run.wait_for("supervise.ready")
    text = profile.read_text()
    assert secret not in text and "export HF_TOKEN" not in text  # even with COMFYUI_PASS_SECRETS=true
    assert oct(profile.stat().st_mode & 0o777) == "0o644"
    # What a login shell gets from it: the pod's variables, and ComfyUI's Python first on PATH.
    shell = subprocess.run(["sh", "-c", f'PATH=/usr/bin:/bin; . "{profile}"; echo "$COMFYUI_PORT|$MY_SETTING|$PATH"'],
                           capture_output=True, text=True, check=True, env={})
    port, value, path = shell.stdout.rstrip("\n").split("|")
    assert port == pod.env["COMFYUI_PORT"] and value == pod.env["MY_SETTING"]
    assert path.split(":")[0] == str(Path(pod.env.get("COMFYUI_PYTHON", sys.executable)).parent)
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_missing_programs_only_warn(pod, supervisor, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    pod.env.update(PUBLIC_KEY="ssh-ed25519 AAAA test", JUPYTER_PASSWORD=PASSWORD, PATH=str(empty))
    pod.env["COMFYUI_PYTHON"] = sys.executable
    # No sbin fallback either: sshd is missing here whether or not this machine has one in /usr/sbin.
    run = supervisor(pod, patch="import supervisor.run.services as s; s.SBIN = ()")
    run.wait_for("supervise.ready")
    run.wait_for("services.sshd_missing")
    run.wait_for("services.jupyter_missing")
    run.send(signal.SIGTERM)
    assert run.wait() == 143


def test_custom_nodes_are_pulled_before_comfyui_starts(pod, supervisor, fakes):
    for name in ("same", "changed", "broken"):
        (pod.comfy_dir / "custom_nodes" / name / ".git").mkdir(parents=True)
    (pod.comfy_dir / "custom_nodes" / "not-a-repo").mkdir()
    pod.env.update(UPDATE_NODES_ON_START="true")
    run = supervisor(pod)
    run.wait_for("supervise.ready")
    pulls = fakes("git")
    assert sorted(Path(p["argv"][p["argv"].index("-C") + 1]).name for p in pulls) == ["broken", "changed", "same"]
    assert all(p["argv"][-2:] == ["pull", "--ff-only"] and p["prompt"] == "0" for p in pulls)
    results = {e["repo"]: e["result"] for e in run.named("services.node_updated")}
    assert results == {"same": "unchanged", "changed": "updated", "broken": "failed"}
    (start,) = pod.records("start")
    assert start["t"] > max(p["t"] for p in pulls) + 0.25  # ComfyUI started after the pulls finished
    failed = [e for e in run.named("git.log") if "unable to access" in e["line"]]
    assert failed and failed[0]["level"] == "warning"  # git's fatal: lines are problems, not information
    git_log = (pod.root / "logs" / "git.log").read_text()  # README promises LOG_DIR/git.log
    assert "fatal: unable to access" in git_log and "Already up to date." in git_log
    run.send(signal.SIGTERM)
    run.wait()


def test_a_hanging_pull_does_not_hold_comfyui_forever(pod, supervisor, fakes):
    (pod.comfy_dir / "custom_nodes" / "slow" / ".git").mkdir(parents=True)
    script = Path(pod.env["PATH"].split(os.pathsep)[0]) / "git"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    pod.env.update(UPDATE_NODES_ON_START="true")
    started = time.monotonic()
    run = supervisor(pod, patch="import supervisor.run.services as s; s.NODE_UPDATE_DEADLINE = 0.5")
    run.wait_for("services.node_update_timeout", timeout=10)
    run.wait_for("supervise.ready")
    assert time.monotonic() - started < 30  # the pull sleeps 60 s: ComfyUI did not wait for it
    run.send(signal.SIGTERM)
    assert run.wait() == 143
