"""Reading the real machine: GPUs from NVML (in a forked child), RAM from psutil and the cgroup, free disk on the
models volume. NVML enumerates every GPU of the host whatever CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES say
(measured on a 2x H200 host), so `apply_visibility` applies both itself."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping

import psutil

from .hardware import CGROUP_UNLIMITED, Gpu, Hardware


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


