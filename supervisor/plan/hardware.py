"""What a machine has, as the planner sees it: `Gpu` and `Hardware`, saved and reloaded (`to_dict`/`from_dict`,
`load` for `--hardware`), and `simulate()`, which builds the same description for a GPU named in
`config/gpus.toml` (or a bare VRAM size) so ops can ask what a pod would do on other cards. Reading the real
machine (NVML, psutil, the cgroup, the disk) is probe.py's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .catalog import config_dir
from ..errors import ConfigError, Problem

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

GIB = 1024**3
MIB = 1024**2
CGROUP_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index (PCI order)
    name: str
    uuid: str
    total: int  # bytes, as NVML reports
    free: int
    reserved: int  # driver reservation (NVML memory v2); 0 when the driver cannot say
    compute_capability: tuple[int, int]
    pci_bus_id: str = ""
    cuda_index: int = -1  # the index CUDA (and ComfyUI's --cuda-device) uses after visibility filtering

    @property
    def usable(self) -> int:
        """Bytes one process can hope to allocate before its own CUDA context."""
        return self.total - self.reserved


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    ram_total: int
    ram_available: int
    disk_free: int
    disk_path: str
    driver_version: str = ""
    cuda_driver_version: int = 0
    ram_source: str = "psutil"
    source: str = "nvml"  # nvml | simulated | file
    warnings: tuple[str, ...] = ()

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def main_gpu(self) -> Gpu | None:
        """The GPU ComfyUI should use: the one with the most usable memory (first in CUDA order on a tie)."""
        if not self.gpus:
            return None
        return max(self.gpus, key=lambda g: (g.usable, -g.cuda_index))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.gpus:
            gpu_text = "no GPU"
        else:
            gpu_text = ", ".join(f"{g.name} {g.total / GIB:.1f} GiB (cuda:{g.cuda_index})" for g in self.gpus)
        source = self.source
        if source == "nvml" and not self.gpus and not self.driver_version:
            source = "no NVML"  # the library or the driver could not be loaded: nothing was read from NVML
        return (f"{gpu_text}; RAM {self.ram_total / GIB:.1f} GiB ({self.ram_source}); "
                f"disk free {self.disk_free / GIB:.1f} GiB at {self.disk_path} [{source}]")


_REQUIRED = ("ram_total", "ram_available", "disk_free", "disk_path")
_GPU_REQUIRED = ("index", "name", "uuid", "total", "free", "reserved", "compute_capability")


def from_dict(data: Mapping[str, Any]) -> Hardware:
    """A Hardware from `to_dict` output; ValueError saying what is missing or wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    gpus = data.get("gpus", [])
    if not isinstance(gpus, list) or not all(isinstance(g, Mapping) for g in gpus):
        raise ValueError("`gpus` must be a list of objects")
    known_gpu = set(Gpu.__dataclass_fields__)
    parsed = []
    for i, g in enumerate(gpus):
        absent = [k for k in _GPU_REQUIRED if k not in g]
        if absent:
            raise ValueError(f"gpus[{i}] is missing {', '.join(absent)}")
        if not isinstance(g["total"], int) or g["total"] <= 0:
            raise ValueError(f"gpus[{i}].total must be a positive number of bytes, found {g['total']!r}")
        parsed.append(Gpu(**{**{k: v for k, v in g.items() if k in known_gpu},
                             "compute_capability": tuple(g["compute_capability"])}))
    for key in ("ram_total", "ram_available", "disk_free"):
        if not isinstance(data[key], int) or data[key] < 0:
            raise ValueError(f"{key} must be a number of bytes, found {data[key]!r}")
    known = set(Hardware.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known and k != "gpus"}
    values["warnings"] = tuple(values.get("warnings", ()))
    return Hardware(gpus=tuple(parsed), **values)


def load(path: Path) -> Hardware:
    """Read a description saved by `supervisor probe` (for --hardware FILE)."""
    try:
        return replace(from_dict(json.loads(Path(path).read_text())), source="file")
    except FileNotFoundError:
        raise ConfigError(Problem("--hardware", f"{path} not found", "save one with: supervisor probe > FILE")) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(Problem("--hardware", f"{path} is not a probe description: {exc}",
                                  "save one with: supervisor probe > FILE")) from None


# ------------------------------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True)
class KnownGpu:
    key: str
    name: str
    total: int
    reserved: int
    compute_capability: tuple[int, int]
    aliases: tuple[str, ...] = ()
    source: str = ""
    pod_ram: int = 0  # bytes of host RAM of a typical pod with this card


def known_gpus(path: Path | None = None) -> dict[str, KnownGpu]:
    data = tomllib.loads((path or config_dir() / "gpus.toml").read_text(encoding="utf-8"))
    return {key: KnownGpu(key=key, name=v["name"], total=int(v["total"]), reserved=int(v["reserved"]),
                          compute_capability=tuple(v["compute_capability"]), aliases=tuple(v.get("aliases", ())),
                          source=v.get("source", ""), pod_ram=int(v.get("pod_ram_gib", 0) * GIB))
            for key, v in data["gpus"].items()}


def find_gpu(name: str, table: dict[str, KnownGpu] | None = None) -> KnownGpu:
    table = table or known_gpus()
    wanted = _squash(name)
    for gpu in table.values():
        if wanted in {_squash(gpu.key), _squash(gpu.name), *(_squash(a) for a in gpu.aliases)}:
            return gpu
    partial = [g for g in table.values() if wanted and wanted in _squash(g.name)]
    if len(partial) == 1:
        return partial[0]
    names = ", ".join(sorted(table))
    raise ConfigError(Problem("--gpu", f"unknown GPU {name!r}", f"use one of: {names}; or --vram SIZE"))


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("nvidia", "").replace("geforce", ""))


_UNITS = {"": GIB, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6,
          "g": 10**9, "t": 10**12, "kib": 1024, "mib": MIB, "gib": GIB, "tib": 1024**4}


def format_size(n_bytes: float) -> str:
    """Bytes for people, in binary units everywhere (plan, fetch, status), so the same total reads the same."""
    if n_bytes >= 0.1 * GIB:
        return f"{n_bytes / GIB:.2f} GiB"
    if n_bytes >= MIB:
        return f"{n_bytes / MIB:.1f} MiB"
    if n_bytes >= 1024:
        return f"{n_bytes / 1024:.1f} KiB"
    return f"{int(n_bytes)} B"


def parse_size(text: str, option: str = "size") -> int:
    """'24GB' (decimal), '24GiB' or '24576MiB' (binary), '24' (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(Problem(option, f"{text!r} is not a size", "write e.g. 24GiB, 24GB, 24576MiB or 24 (GiB)"))
    return int(float(match.group(1)) * _UNITS[unit])


def simulate(base: Hardware, gpu: str | None = None, vram: str | None = None, count: int | None = None,
             ram: str | None = None, disk: str | None = None) -> Hardware:
    """`base` with its GPUs, RAM or disk replaced by the named or sized ones. A named card brings the RAM of a
    typical pod with it (config/gpus.toml) unless `ram` is given."""
    gpus = base.gpus
    ram_total, ram_available, ram_source = base.ram_total, base.ram_available, base.ram_source
    if count is not None and not (gpu or vram):
        raise ConfigError(Problem("--gpu-count", "needs --gpu NAME or --vram SIZE (the GPUs to simulate)",
                                  "add --gpu or --vram, or leave --gpu-count out"))
    if count is not None and count < 1:
        raise ConfigError(Problem("--gpu-count", f"{count} is not a number of GPUs (at least 1)",
                                  "to plan for a machine without a GPU: CUDA_VISIBLE_DEVICES= supervisor plan"))
    if gpu or vram:
        known = find_gpu(gpu) if gpu else None
        total = parse_size(vram, "--vram") if vram else known.total  # type: ignore[union-attr]
        if total < GIB:
            raise ConfigError(Problem("--vram", f"{vram!r} is not a GPU's memory (less than 1 GiB)",
                                      "write the card's memory, e.g. 24GiB, 24GB or 24"))
        reserved = known.reserved if known and not vram else min(419_430_400, total // 20)
        name = known.name if known and not vram else "simulated GPU"
        cc = known.compute_capability if known else (8, 9)
        gpus = tuple(Gpu(index=i, cuda_index=i, name=name, uuid=f"GPU-simulated-{i}", total=total,
                         free=total - reserved, reserved=reserved, compute_capability=cc,
                         pci_bus_id=f"00000000:{i:02x}:00.0") for i in range(count or 1))
        if known and known.pod_ram and not ram:
            ram_total = ram_available = known.pod_ram
            ram_source = f"typical {known.key} pod; --ram to change"
    if ram:
        ram_total = ram_available = parse_size(ram, "--ram")
        ram_source = "simulated"
    disk_free = parse_size(disk, "--disk") if disk else base.disk_free
    warnings = tuple(w for w in base.warnings if not w.startswith(("no visible NVIDIA GPU", "NVML unavailable")))
    if not gpus:
        warnings += ("no visible NVIDIA GPU: planning for CPU only (ComfyUI starts with --cpu)",)
    return replace(base, gpus=gpus, ram_total=ram_total, ram_available=ram_available, disk_free=disk_free,
                   ram_source=ram_source, source="simulated",
                   driver_version=base.driver_version or ("simulated" if gpus else ""), warnings=warnings)
