"""A stand-in for the `pynvml` module that answers from a real NVML reading (tests/data/nvml/*.json).

It implements only the calls `supervisor.plan.hardware` makes, with the same shapes nvidia-ml-py returns, so the probe's
own mapping code runs unchanged against recorded H100 and H200 pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

DATA = Path(__file__).resolve().parent.parent / "data" / "nvml"


class NVMLError(Exception):
    pass


class FakeNvml:
    nvmlMemory_v2 = 0x02000028  # the real constant's value; only passed through

    def __init__(self, reading: dict | None, init_error: Exception | None = None, v2: bool = True):
        self.reading, self.init_error, self.v2 = reading, init_error, v2
        self.initialised = False
        self.shutdowns = 0

    @classmethod
    def from_file(cls, name: str, **kwargs) -> "FakeNvml":
        return cls(json.loads((DATA / name).read_text()), **kwargs)

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def _check(self) -> None:
        if not self.initialised:
            raise NVMLError("Uninitialized")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.reading["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check()
        return self.reading["cuda_driver_version"]

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.reading["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        self._check()
        return self.reading["devices"][index]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()  # older bindings return bytes; the probe must cope

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict, version: int | None = None) -> SimpleNamespace:
        if version is not None:
            if not self.v2:
                raise NVMLError("Function Not Found")
            return SimpleNamespace(**handle["memory_v2"])
        return SimpleNamespace(**handle["memory_v1"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict) -> tuple[int, int]:
        return tuple(handle["cuda_capability"])

    def nvmlDeviceGetPciInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(busId=handle["pci_bus_id"])
