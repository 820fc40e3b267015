"""Fixtures for fetch tests: a stand-in Hub on loopback, settings pointing at it, plans built by hand."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.plan.hardware import Hardware
from supervisor.plan.types import Download, Plan, ResourceCheck
from supervisor.plan.settings import Settings
from supervisor.plan.environment import load_settings
from supervisor.fetch.tuning import Tuning
from tests.standins.hub import Hub

TOKEN = "hf_StandInTokenValue0123456789abcdefXYZ"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Short waits, small parts: every fetch path runs in well under a second on loopback.
FAST = Tuning(min_part=256 * 1024, max_part=1 << 20, single_below=512 * 1024, min_steal=64 * 1024,
              write_buffer=64 * 1024, checkpoint_bytes=128 * 1024, checkpoint_seconds=0.2, backoff_initial=0.02,
              backoff_max=0.2, retry_after_max=2.0, progress_interval=0.1, lock_heartbeat=0.1,
              lock_stale_after=0.6)


def payload(n: int, seed: int = 0) -> bytes:
    """n deterministic, incompressible bytes."""
    import random

    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(tmp_path: Path):
    with Hub(tmp_path / "hub", lfs_threshold=100_000) as server:
        yield server


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def make_settings(hub: Hub, models: Path, **env: str) -> Settings:
    environ = {"MODELS_DIR": str(models), "HF_ENDPOINT": hub.url, "DISK_RESERVE_GB": "0",
               "DOWNLOAD_STALL_TIMEOUT": "2", "DOWNLOAD_RETRIES": "5", **env}
    return load_settings(environ)


def hub_file(repo: str, path: str, dest: str, size: int = 0, **extra: Any) -> Download:
    return Download(key=dest, dest=dest, kind="file", size=size, repo=repo, path=path, auth_env="HF_TOKEN",
                    features=("test",), **extra)


def make_plan(*downloads: Download) -> Plan:
    hardware = Hardware(gpus=(), ram_total=1 << 34, ram_available=1 << 34, disk_free=1 << 40, disk_path="/")
    return Plan(hardware=hardware, gpu=None, vram_class="none", gpu_tier="consumer", models=(), downloads=downloads,
                comfyui_args=(), vram_budget=(), disk=ResourceCheck(0, 0, True), ram=ResourceCheck(0, 0, True))


def subprocess_env(hub: Hub, models: Path, catalog: Path, **extra: str) -> dict[str, str]:
    """Environment for `python -m supervisor fetch` against the stand-in: only the test catalogue's feature on."""
    env = {"PATH": os.environ["PATH"], "HOME": str(models.parent / "home"), "MODELS_DIR": str(models),
           "HF_ENDPOINT": hub.url, "SUPERVISOR_CATALOG": str(catalog), "LOG_FORMAT": "json",
           "DISK_RESERVE_GB": "0", "DOWNLOAD_STALL_TIMEOUT": "3", "ENABLE_STEADYDANCER": "false",
           "ENABLE_TESTFILES": "true", "PYTHONPATH": str(REPO_ROOT)}
    env.update(extra)
    return env


def write_catalog(path: Path, files: dict[str, dict[str, Any]]) -> Path:
    """A catalogue with one feature, `testfiles` (ENABLE_TESTFILES), needing `files`."""
    lines = []
    for key, spec in files.items():
        lines.append(f"[files.{key}]")
        for name, value in spec.items():
            lines.append(f"{name} = {value!r}" if not isinstance(value, str) else f'{name} = "{value}"')
        lines.append("")
    lines.append("[features.testfiles]")
    lines.append('switch = "ENABLE_TESTFILES"')
    lines.append('description = "files for the fetch tests"')
    lines.append(f"files = {list(files)!r}".replace("'", '"'))
    path.write_text("\n".join(lines) + "\n")
    return path


class Stopper:
    """Sets an event when a condition about the hub becomes true (e.g. N bytes sent), from a helper thread."""

    def __init__(self, predicate, event: threading.Event | None = None):
        self.event = event or threading.Event()
        self.fired_at = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(predicate,), daemon=True)
        self._thread.start()

    def _run(self, predicate) -> None:
        while not self._done.wait(0.005):
            if predicate():
                import time

                self.fired_at = time.monotonic()
                self.event.set()
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)


class Events:
    """Log events of the code under test, captured as parsed JSON lines."""

    def __init__(self) -> None:
        import io

        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def all(self, name: str | None = None) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.text.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    out.append(event)
        return out


@pytest.fixture
def events():
    from supervisor import logs

    captured = Events()
    logs.configure("debug", "json", stream=captured.stream)
    logs.register_secret(TOKEN)
    yield captured
    logs.configure("info", "json")
