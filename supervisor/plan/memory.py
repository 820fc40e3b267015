"""The rung of the out-of-memory ladder a pod stepped down to, remembered across restarts of the supervisor.

A pod that runs out of memory on its plan should not start every boot on that plan again. After a step down the
supervisor writes `{key: {degrade, why, at}}` to COMFYUI_DATA_DIR/.supervisor/oom-steps.json (on the volume). The
key is a hash of what the plan was made from, as the planner saw it: the GPU (name, memory), the host RAM class,
and the un-degraded plan's choices and ComfyUI flags. Any change of those (another card, another variant or
switch, a new catalogue that plans differently) gives another key, so the remembered rung no longer applies and
the pod starts from the top of the ladder again. `supervisor plan --reset-oom` forgets it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .hardware import GIB
from .types import Plan

FILE = Path(".supervisor") / "oom-steps.json"


def path(settings: Any) -> Path:
    return Path(settings.comfyui_data_dir) / FILE


def key(base: Plan) -> str:
    """What the remembered rung depends on: the plan made without any step down, and the machine it was made for."""
    gpu = base.gpu
    identity = {
        "gpu": [gpu.name, gpu.total] if gpu else None,
        "ram_gib": round(base.hardware.ram_total / GIB) if base.hardware else None,
        "models": [[m.feature, m.variant, m.offload, m.knobs.blocks_to_swap if m.knobs else None]
                   for m in base.models],
        "comfyui_args": list(base.comfyui_args),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load(file: Path, plan_key: str) -> dict[str, Any] | None:
    """The remembered entry for this key ({degrade, why, at}), or None (nothing remembered, or unreadable)."""
    entry = _read(file).get(plan_key)
    if not isinstance(entry, dict) or not isinstance(entry.get("degrade"), dict):
        return None
    degrade = {str(k): int(v) for k, v in entry["degrade"].items() if isinstance(v, int) and v > 0}
    return {**entry, "degrade": degrade} if degrade else None


def save(file: Path, plan_key: str, degrade: Mapping[str, int], why: str) -> None:
    """Remember `degrade` for this key (atomically; other keys, e.g. other GPUs of the pod, are kept)."""
    data = _read(file)
    data[plan_key] = {"degrade": dict(degrade), "why": why, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, file)


def forget(file: Path) -> bool:
    """Forget every remembered rung. True if there was something to forget."""
    try:
        file.unlink()
        return True
    except FileNotFoundError:
        return False


def _read(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
