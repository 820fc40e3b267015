"""The plan: what the planner decided, as plain frozen data that fetch, launch and the workflows read.

Nothing here decides anything; `planner.py` builds a Plan, `report.py` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .catalog import FileSpec
from .hardware import GIB, Gpu, Hardware

# Offload modes, named after GPU_MEMORY_MODE's values.
FULL = "full"
MODEL_OFFLOAD = "model_cpu_offload"
SEQUENTIAL = "sequential_cpu_offload"
ON_DEMAND = "comfyui"  # a model ComfyUI loads itself when a workflow asks for it
SKIPPED = "skipped"


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


@dataclass(frozen=True)
class Download:
    """One file (or snapshot folder) the plan needs under MODELS_DIR."""

    key: str
    dest: str
    kind: str
    size: int
    repo: str = ""
    path: str = ""
    revision: str = "main"
    url: str = ""
    sha256: str | None = None
    auth_env: str = ""
    allow: tuple[str, ...] = ()
    features: tuple[str, ...] = ()  # every feature that asked for it
    present: bool = False

    @classmethod
    def from_spec(cls, spec: FileSpec, features: tuple[str, ...], present: bool) -> "Download":
        return cls(key=spec.key, dest=spec.dest, kind=spec.kind, size=spec.size, repo=spec.repo, path=spec.path,
                   revision=spec.revision, url=spec.url, sha256=spec.sha256, auth_env=spec.auth_env,
                   allow=spec.allow, features=features, present=present)

    @property
    def source(self) -> str:
        return self.url if self.kind == "url" else f"{self.repo}/{self.path}" if self.path else self.repo


@dataclass(frozen=True)
class BudgetLine:
    item: str
    gib: float
    note: str = ""


@dataclass(frozen=True)
class VramBudget:
    """The peak (sampling) VRAM of one model, part by part, against the card's capacity."""

    feature: str
    capacity_gib: float
    lines: tuple[BudgetLine, ...]

    @property
    def total_gib(self) -> float:
        return round(sum(line.gib for line in self.lines), 2)

    @property
    def fits(self) -> bool:
        # The lines are rounded to 0.01 GiB for people; their sum may exceed the exact peak by half a hundredth
        # per line, which must not turn a plan that fits into one that "DOES NOT FIT".
        return self.total_gib <= self.capacity_gib + 0.005 * len(self.lines) + 1e-9


@dataclass(frozen=True)
class WanKnobs:
    """Inputs of the ComfyUI-WanVideoWrapper nodes that follow from the plan."""

    files: Mapping[str, str]  # role -> value for the node's file input ("model", "vae", "text_encoder", ...)
    base_precision: str
    quantization: str
    blocks_to_swap: int
    prefetch_blocks: int
    load_device: str  # main_device | offload_device
    attention_mode: str
    text_encoder_device: str  # gpu | cpu
    merge_loras: bool
    vae_tiling: bool
    onnx_device: str  # CUDAExecutionProvider | CPUExecutionProvider


@dataclass(frozen=True)
class Step:
    """One way to run a model: a rung of the ladder the supervisor walks down after an out-of-memory exit."""

    variant: str
    offload: str
    blocks_to_swap: int


@dataclass(frozen=True)
class ModelChoice:
    feature: str
    variant: str | None
    offload: str
    reason: str
    knobs: WanKnobs | None = None
    ladder: tuple[Step, ...] = ()  # the remaining fallbacks, next first
    notes: tuple[str, ...] = ()
    packs: tuple[str, ...] = ()  # node packs that load its files, with their pins ("ComfyUI-GGUF@be2a0833")
    workflow: str = ""  # its minimal workflow under workflows/ (or "none: why")
    vram_gib: float = 0.0  # peak VRAM while its workflow runs (on-demand features)


@dataclass(frozen=True)
class ResourceCheck:
    need: int
    available: int
    fits: bool
    detail: str = ""


@dataclass(frozen=True)
class Plan:
    hardware: Hardware
    gpu: Gpu | None
    vram_class: str
    gpu_tier: str
    models: tuple[ModelChoice, ...]
    downloads: tuple[Download, ...]
    comfyui_args: tuple[str, ...]
    vram_budget: tuple[VramBudget, ...]
    disk: ResourceCheck
    ram: ResourceCheck
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    degrade: Mapping[str, int] = field(default_factory=dict)
    remembered: Mapping[str, Any] = field(default_factory=dict)  # a step down remembered from an earlier run

    @property
    def runnable(self) -> bool:
        return not self.errors

    def model(self, feature: str) -> ModelChoice | None:
        return next((m for m in self.models if m.feature == feature), None)

    def missing(self) -> list[Download]:
        return [d for d in self.downloads if not d.present]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runnable"] = self.runnable
        data["vram_budget"] = [
            {**asdict(b), "total_gib": b.total_gib, "fits": b.fits} for b in self.vram_budget]
        data["download_bytes"] = sum(d.size for d in self.missing())
        return data
