"""What this machine has: GPUs from NVML, RAM from psutil and the cgroup, free disk on the models volume.

`probe()` reads the real machine; `simulate()` builds the same description for a GPU named in `config/gpus.toml`
(or a bare VRAM size) so ops can ask what a pod would do on other cards; `to_dict`/`from_dict` save and reload it.
NVML enumerates every GPU of the host whatever CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES say (measured on a
2x H200 host), so `apply_visibility` applies both itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import psutil

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
# Real probe


def probe(models_dir: Path, environ: Mapping[str, str] | None = None, nvml: Any = None,
          cgroup_root: Path = Path("/sys/fs/cgroup")) -> Hardware:
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    gpus, driver, cuda = probe_gpus(nvml, warnings) if nvml is not None else probe_gpus_isolated(warnings)
    gpus = apply_visibility(gpus, environ, warnings)
    ram_total, ram_available, ram_source = probe_ram(cgroup_root)
    disk_path, disk_free = probe_disk(models_dir)
    if not gpus:
        warnings.append("no visible NVIDIA GPU: planning for CPU only (ComfyUI starts with --cpu)")
    return Hardware(gpus=tuple(gpus), ram_total=ram_total, ram_available=ram_available, disk_free=disk_free,
                    disk_path=str(disk_path), driver_version=driver, cuda_driver_version=cuda,
                    ram_source=ram_source, source="nvml", warnings=tuple(warnings))


def probe_gpus_isolated(warnings: list[str]) -> tuple[list[Gpu], str, int]:
    """`probe_gpus` in a forked child. Loading libnvidia-ml and initialising NVML costs the process about 21 MB of
    RSS that nvmlShutdown does not give back (measured on an H100 pod); the supervisor lives as long as the pod, so
    it never loads the library itself. The child reports through a pipe and exits at once."""
    if not hasattr(os, "fork"):
        return probe_gpus(None, warnings)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: probe, write one JSON document, leave without running any cleanup of the parent's
        code = 0
        try:
            os.close(read_end)
            found: list[str] = []
            gpus, driver, cuda = probe_gpus(None, found)
            payload = json.dumps({"gpus": [asdict(g) for g in gpus], "driver": driver, "cuda": cuda, "warnings": found})
            with os.fdopen(write_end, "w") as out:
                out.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        text = reader.read()
    os.waitpid(pid, 0)
    try:
        data = json.loads(text)
    except ValueError:
        warnings.append("the NVML probe process failed; no GPU can be seen")
        return [], "", 0
    warnings.extend(data["warnings"])
    gpus = [Gpu(**{**g, "compute_capability": tuple(g["compute_capability"])}) for g in data["gpus"]]
    return gpus, data["driver"], data["cuda"]


def probe_gpus(nvml: Any, warnings: list[str]) -> tuple[list[Gpu], str, int]:
    """Every GPU NVML sees, in NVML (PCI) order. `nvml` is the pynvml module, or a stand-in in tests."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            warnings.append("nvidia-ml-py is not installed: no GPU can be seen")
            return [], "", 0
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        warnings.append(f"NVML unavailable ({_nvml_text(exc)}): no NVIDIA driver in this container?")
        return [], "", 0
    gpus: list[Gpu] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                gpus.append(_read_gpu(nvml, index))
            except Exception as exc:
                warnings.append(f"GPU {index}: NVML query failed ({_nvml_text(exc)}); skipped")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, driver, cuda


def _read_gpu(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    try:  # v2 separates the driver's reservation from "used"
        memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
        reserved = int(memory.reserved)
    except Exception:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        reserved = 0
    try:
        pci = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    except Exception:
        pci = ""
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return Gpu(index=index, name=_text(nvml.nvmlDeviceGetName(handle)), uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
               total=int(memory.total), free=int(memory.free), reserved=reserved,
               compute_capability=(int(major), int(minor)), pci_bus_id=pci)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------------------------
# Visibility


def apply_visibility(gpus: list[Gpu], environ: Mapping[str, str], warnings: list[str]) -> list[Gpu]:
    """Keep the GPUs that NVIDIA_VISIBLE_DEVICES, then CUDA_VISIBLE_DEVICES, leave visible; number them as CUDA does.

    CUDA's default order is fastest-first; for the identical cards of a pod that is PCI order, which is NVML's.
    """
    ordered = sorted(gpus, key=lambda g: (g.pci_bus_id, g.index))
    runtime = _select(ordered, environ.get("NVIDIA_VISIBLE_DEVICES"), "NVIDIA_VISIBLE_DEVICES", warnings,
                      runtime_applied=True)
    visible = _select(runtime, environ.get("CUDA_VISIBLE_DEVICES"), "CUDA_VISIBLE_DEVICES", warnings)
    return [replace(g, cuda_index=i) for i, g in enumerate(visible)]


def _select(gpus: list[Gpu], value: str | None, name: str, warnings: list[str],
            runtime_applied: bool = False) -> list[Gpu]:
    if value is None or value.strip().lower() == "all":
        return gpus
    text = value.strip()
    if text.lower() in ("", "none", "void", "-1"):
        warnings.append(f"{name}={value!r} hides every GPU")
        return []
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if runtime_applied and all(e.isdigit() for e in entries) and len(entries) == len(gpus):
        # The NVIDIA container runtime already mounted exactly these GPUs; inside, NVML renumbers them from 0.
        return gpus
    chosen: list[Gpu] = []
    for entry in entries:
        match = _match(gpus, entry)
        if match is None:
            # CUDA stops at the first entry it cannot use; so do we.
            warnings.append(f"{name}: {entry!r} matches no GPU; it and the entries after it are ignored")
            break
        if match not in chosen:
            chosen.append(match)
    return chosen


def _match(gpus: list[Gpu], entry: str) -> Gpu | None:
    if entry.isdigit():
        position = int(entry)
        return gpus[position] if position < len(gpus) else None
    lowered = entry.lower()
    if lowered.startswith("gpu-") or lowered.startswith("mig-"):
        found = [g for g in gpus if g.uuid.lower().startswith(lowered)]
        return found[0] if len(found) == 1 else None
    return None


# ------------------------------------------------------------------------------------------------------------------
# RAM and disk


def probe_ram(cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int, str]:
    """(total, available, source): psutil's figures, lowered to the container's cgroup limit if one is set."""
    memory = psutil.virtual_memory()
    total, available, source = int(memory.total), int(memory.available), "psutil"
    limit = cgroup_memory_limit(cgroup_root)
    if limit is not None and limit[0] < total:
        limit_bytes, usage, source = limit
        total = limit_bytes
        available = max(0, min(available, limit_bytes - usage))
    return total, available, source


def cgroup_memory_limit(root: Path) -> tuple[int, int, str] | None:
    """(limit, usage, "cgroup v2"|"cgroup v1") of this process's memory cgroup, or None without a limit."""
    candidates = [(root / "memory.max", root / "memory.current", "cgroup v2")]
    own = _own_cgroup_v2_path()
    if own:
        candidates.append((root / own / "memory.max", root / own / "memory.current", "cgroup v2"))
    candidates.append((root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes", "cgroup v1"))
    for limit_file, usage_file, kind in candidates:
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= CGROUP_UNLIMITED:
            continue
        try:
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            usage = 0
        return int(text), usage, kind
    return None


def _own_cgroup_v2_path() -> str:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip("/")
    except OSError:
        pass
    return ""


def probe_disk(models_dir: Path) -> tuple[Path, int]:
    """Free bytes (f_bavail: what an unprivileged writer gets) on the volume that holds or will hold `models_dir`."""
    path = Path(models_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, int(shutil.disk_usage(path).free)


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
