"""The model catalogue's types: files, features with their variants and runtime sizing, the planner's constants.

Files are declared once under `[files.<key>]` and referenced by key from features and variants, so a file shared by
several features (the Wan 2.1 VAE, say) is one entry and one download. Reading and validating
`config/catalog.toml` (plus the user's `SUPERVISOR_CATALOG` files) is catalog_load.py's job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .packs import Pack

SHA256 = re.compile(r"^[0-9a-f]{64}$")
REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
FILE_KINDS = ("file", "snapshot", "url")


def config_dir() -> Path:
    """The shipped `config/` folder: beside the package in a checkout, inside it once installed."""
    override = os.environ.get("SUPERVISOR_CONFIG_DIR")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent.parent  # supervisor/
    for candidate in (package.parent / "config", package / "config"):
        if (candidate / "catalog.toml").is_file():
            return candidate
    raise FileNotFoundError(f"config/catalog.toml not found beside {package}; set SUPERVISOR_CONFIG_DIR")


@dataclass(frozen=True)
class FileSpec:
    """One file (or, for `snapshot`, one repository folder) that a feature needs under MODELS_DIR."""

    key: str
    dest: str  # relative to MODELS_DIR, forward slashes: "diffusion_models/x.safetensors"
    size: int  # bytes; the Hub's own figure wins at download time, this one is for planning
    kind: str = "file"
    repo: str = ""
    path: str = ""
    revision: str = "main"
    sha256: str | None = None
    url: str = ""
    auth_env: str = ""  # variable holding the bearer token sent with it (HF_TOKEN for the Hub)
    allow: tuple[str, ...] = ()  # snapshot: glob patterns of files to take
    note: str = ""

    @property
    def folder(self) -> str:
        return self.dest.split("/", 1)[0]

    @property
    def name(self) -> str:
        """The value a ComfyUI file input shows: the path below its model folder."""
        return self.dest.split("/", 1)[1] if "/" in self.dest else self.dest

    @property
    def source(self) -> str:
        if self.kind == "url":
            return self.url
        return f"{self.repo}@{self.revision}:{self.path or '*'}"


@dataclass(frozen=True)
class Runtime:
    """How the planner sizes a DiT model on the GPU (ComfyUI-WanVideoWrapper's block swap)."""

    blocks: int = 40
    nonblock_fraction: float = 0.02  # embeddings and head, never swapped
    activation_gib: float = 3.0  # sampling working set at the reference resolution (a variant may override it)
    decode_gib: float = 2.5  # VAE decode working set, untiled
    decode_tiled_gib: float = 2.0  # VAE decode working set, tiled
    merged_load_factor: float = 1.0  # GPU memory of loading (main_device) with the LoRA merged, in DiT sizes
    text_encoder_overhead_gib: float = 0.0  # on top of the text encoder's file while it encodes on the GPU
    pose_gib: float = 0.0  # pose models on onnxruntime's CUDA provider
    lora_file: str | None = None  # an unmerged LoRA that stays beside the model


@dataclass(frozen=True)
class Variant:
    name: str  # "fp16", "fp8", "gguf:Q4_K_M"
    family: str  # "fp16", "fp8", "gguf"
    files: tuple[str, ...]
    dit: str | None = None  # key of the diffusion model file, sized for VRAM
    precision: str = "bf16"  # WanVideoModelLoader.base_precision
    quantization: str = "disabled"  # WanVideoModelLoader.quantization
    description: str = ""
    vram_gib: float = 0.0  # peak VRAM of the feature's workflow with this variant (0: the feature's figure)
    refused: str = ""  # why the plan will not run this variant (no loader reads it, ...)
    activation_gib: float | None = None  # sampling working set, if not the runtime's


@dataclass(frozen=True)
class DynamicFiles:
    """Files named at run time by a list variable (CivitAI version ids)."""

    env: str
    source: str  # "civitai"
    folder: str


@dataclass(frozen=True)
class Feature:
    name: str
    switch: str
    description: str
    default_enabled: bool = False
    files: tuple[str, ...] = ()
    variants: dict[str, Variant] = field(default_factory=dict)  # best quality first
    variant_env: str = ""
    variant_default: str = ""
    auto: bool = False  # the planner may pick the variant from the hardware
    multi_choice: bool = False  # several variants at once (CONTROLNET_MODELS)
    requires_gpu: bool = False
    vram_gib: float = 0.0  # VRAM need of a feature without a runtime model
    runtime: Runtime | None = None
    requires: tuple[str, ...] = ()  # other features that must be enabled too
    min_tier: str = ""  # GPU_TIER needed ("datacenter" for InfCam)
    dynamic: DynamicFiles | None = None
    roles: dict[str, str] = field(default_factory=dict)  # workflow role ("vae", "text_encoder", ...) -> file key
    notes: tuple[str, ...] = ()
    packs: tuple[str, ...] = ()  # node packs whose nodes load its files (config/packs.toml tables; "ComfyUI" = core)
    workflow: str = ""  # its minimal API workflow, relative to workflows/
    workflow_note: str = ""  # why it has none
    refused: str = ""  # why the image cannot run it: the plan skips it with this reason and downloads nothing
    resident: bool = False  # stays in VRAM beside the runtime model (comes off its budget) instead of on demand

    def families(self) -> list[str]:
        return list(dict.fromkeys(v.family for v in self.variants.values()))

    def parse_variant(self, raw: str) -> str:
        """Check a variant variable's value: `auto`, a variant name, or a family (`gguf` = any GGUF quant)."""
        value = raw.strip()
        lowered = value.lower()
        if lowered == "auto" and self.auto:
            return "auto"
        by_lower = {name.lower(): name for name in self.variants}
        if lowered in by_lower:
            return by_lower[lowered]
        if lowered in (f.lower() for f in self.families()):
            return lowered
        accepted = (["auto"] if self.auto else []) + self._accepted_names()
        raise ValueError(f"expected one of: {', '.join(accepted)}")

    def parse_choices(self, raw: str) -> tuple[str, ...]:
        names = [part.strip() for part in raw.split(",") if part.strip()]
        by_lower = {name.lower(): name for name in self.variants}
        unknown = [n for n in names if n.lower() not in by_lower]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; expected a comma list of: {', '.join(self.variants)}")
        return tuple(dict.fromkeys(by_lower[n.lower()] for n in names))

    def _family(self, family: str) -> list[Variant]:
        return [v for v in self.variants.values() if v.family.lower() == family]

    def _accepted_names(self) -> list[str]:
        names: list[str] = []
        for family in self.families():
            members = self._family(family.lower())
            if len(members) > 1 or members[0].name != family:
                names.append(family)
            names += [v.name for v in members]
        return list(dict.fromkeys(names))

    def candidates(self, choice: str | None) -> list[Variant]:
        """Variants a selection allows, best quality first."""
        if choice in (None, "auto"):
            return list(self.variants.values())
        if choice in self.variants:
            return [self.variants[choice]]
        return self._family(choice.lower())


@dataclass(frozen=True)
class PlannerConstants:
    cuda_context_gib: float = 0.5  # measured: 526.8 MiB per process on H100/H200
    headroom_fraction: float = 0.08  # of usable VRAM, kept free for fragmentation and spikes
    headroom_min_gib: float = 1.0
    max_swap_fraction: float = 0.4  # auto never swaps more than this share of blocks while a smaller variant fits
    ram_baseline_gib: float = 4.0  # ComfyUI, torch and the node packs in host RAM
    ram_headroom_fraction: float = 0.1
    tier_datacenter_mib: int = 48000
    tier_prosumer_mib: int = 20000
    highvram_min_gib: float = 44.0  # keep models resident between prompts above this (--highvram)
    lowvram_max_gib: float = 12.5  # ComfyUI's --lowvram for its own nodes below this
    vae_tiling_below_gib: float = 20.0


@dataclass(frozen=True)
class Catalog:
    files: dict[str, FileSpec]
    features: dict[str, Feature]
    folders: tuple[str, ...]
    planner: PlannerConstants
    sources: tuple[Path, ...] = ()
    packs: dict[str, Pack] = field(default_factory=dict)  # config/packs.toml, ComfyUI itself under "ComfyUI"

    def feature_by_switch(self, switch: str) -> Feature | None:
        return next((f for f in self.features.values() if f.switch == switch), None)
