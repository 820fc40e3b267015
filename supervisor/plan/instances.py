"""One ComfyUI per GPU (COMFYUI_PER_GPU): which instances a pod runs, on which GPU and port, and what each plans for.

ComfyUI runs one workflow at a time on one GPU, so a 2x or 4x pod with one ComfyUI leaves GPUs idle. With
COMFYUI_PER_GPU=true every visible GPU gets its own ComfyUI. Each instance plans for its own GPU alone (a mixed
80 + 24 GB host gets bf16 on one and fp8 on the other) and for its share of the host's RAM (the instances swap
blocks to the same RAM). Each is started with CUDA_VISIBLE_DEVICES set to its GPU's UUID (robust to CUDA's own
device order), so inside it the GPU is cuda:0.

Ports: the first instance keeps COMFYUI_PORT; the others take COMFYUI_PORT + 100, + 200, ... skipping the ports of
the status endpoint and JupyterLab (8189 sits right after 8188, so +1 steps would clash), or COMFYUI_PORTS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import ConfigError, Problem
from .hardware import GIB, Gpu, Hardware
from .settings import Settings
from .types import Download, Plan

PORT_STEP = 100


@dataclass(frozen=True)
class Instance:
    index: int
    name: str  # "comfyui" when it is the only one; "comfyui-0", "comfyui-1", ... with COMFYUI_PER_GPU
    gpu: Gpu | None  # as the host sees it (NVML index, UUID); None without a GPU
    port: int
    hardware: Hardware  # what this instance plans for: its GPU alone (as cuda:0), its share of the RAM
    per_gpu: bool = False

    @property
    def cuda_visible_devices(self) -> str | None:
        """CUDA_VISIBLE_DEVICES for this instance's ComfyUI; None: leave the pod's own."""
        return self.gpu.uuid if self.per_gpu and self.gpu else None

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "name": self.name, "port": self.port,
                "gpu": {"index": self.gpu.index, "name": self.gpu.name, "uuid": self.gpu.uuid} if self.gpu else None,
                "cuda_visible_devices": self.cuda_visible_devices}


def instances(settings: Settings, hardware: Hardware) -> list[Instance]:
    """The ComfyUI instances this pod runs: one (on the largest GPU) unless COMFYUI_PER_GPU and several GPUs."""
    gpus = sorted(hardware.gpus, key=lambda g: (g.cuda_index, g.index))
    if not settings.comfyui_per_gpu or len(gpus) < 2:
        return [Instance(0, "comfyui", hardware.main_gpu(), settings.comfyui_port, hardware)]
    ports = instance_ports(settings, len(gpus))
    share = len(gpus)
    out = []
    for i, (gpu, port) in enumerate(zip(gpus, ports)):
        own = replace(hardware, gpus=(replace(gpu, cuda_index=0),), ram_total=hardware.ram_total // share,
                      ram_available=hardware.ram_available // share)
        out.append(Instance(i, f"comfyui-{i}", gpu, port, own, per_gpu=True))
    return out


def instance_ports(settings: Settings, count: int) -> list[int]:
    if settings.comfyui_ports:
        if len(settings.comfyui_ports) < count:
            raise ConfigError([Problem("COMFYUI_PORTS", f"{len(settings.comfyui_ports)} ports for {count} GPUs",
                                       "list one port per visible GPU, or leave it empty for the default ports")])
        return list(settings.comfyui_ports[:count])
    taken = {settings.status_addr[1], settings.jupyter_port, 22}
    ports, port = [], settings.comfyui_port
    while len(ports) < count:
        if port > 65535:
            raise ConfigError([Problem("COMFYUI_PORT", f"no free port for {count} instances above "
                                                       f"{settings.comfyui_port}", "set COMFYUI_PORTS")])
        if port not in taken:
            ports.append(port)
        port += PORT_STEP
    return ports


def pod_files(plans: Sequence[Plan]) -> Plan:
    """One plan whose downloads are every instance's files, each once (the fetch's input). With one instance, that
    instance's plan; with several, the first plan with the union of the downloads, their errors and warnings, and
    a disk check of the union (each plan alone may fit where all together do not)."""
    if len(plans) == 1:
        return plans[0]
    downloads: dict[str, Download] = {}
    for plan in plans:
        for d in plan.downloads:
            known = downloads.get(d.dest)
            downloads[d.dest] = d if known is None else replace(
                known, features=tuple(dict.fromkeys(known.features + d.features)))
    first = plans[0]
    missing = sum(d.size for d in downloads.values() if not d.present)
    disk = replace(first.disk, need=missing, fits=missing <= first.disk.available,
                   detail=f"{missing / GIB:.1f} GiB to download for {len(plans)} instances; "
                          f"{first.disk.available / GIB:.1f} GiB may be used")
    errors = [e for plan in plans for e in plan.errors]
    if not disk.fits:
        errors.append(f"disk: the {len(plans)} instances need {missing / GIB:.1f} GiB of downloads together, "
                      f"{first.disk.available / GIB:.1f} GiB may be used; free space or lower a variant")
    return replace(first, downloads=tuple(downloads.values()), disk=disk,
                   errors=tuple(dict.fromkeys(errors)),
                   warnings=tuple(dict.fromkeys(w for plan in plans for w in plan.warnings)))
