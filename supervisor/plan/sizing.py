"""How much GPU memory one variant of a DiT model needs in each phase of the shipped workflows, on one GPU.

The numbers behind it (the `[planner]` table and the runtime table of config/catalog.toml) were measured on an H200
emulating each card class (bench/gpu_classes.py, bench/results/gpu-classes-*); `planner.py` decides with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection

from .catalog import Catalog, Feature, Variant
from .hardware import GIB, Gpu
from .types import FULL, MODEL_OFFLOAD, SEQUENTIAL, BudgetLine, VramBudget, gib


@dataclass
class Fit:
    """How one variant would run in one offload mode on this GPU."""

    variant: Variant
    offload: str
    swap: int
    budget: VramBudget
    peak_gib: float
    swapped_bytes: int
    ram_need: int
    disk_need: int
    text_encoder_device: str
    problems: list[str] = field(default_factory=list)  # why it cannot run at all
    warnings: list[str] = field(default_factory=list)  # why it may not fit
    main_device: bool = False  # loaded to the GPU (WanVideoModelLoader load_device=main_device)

    @property
    def feasible(self) -> bool:
        return not self.problems


class Sizer:
    """Sizes the variants of one runtime feature on one GPU."""

    def __init__(self, feature: Feature, catalog: Catalog, gpu: Gpu, ram_capacity: int, disk_left: int,
                 present: Collection[str], held: list[BudgetLine] | None = None):
        self.feature, self.files, self.c = feature, catalog.files, catalog.planner
        self.rt = feature.runtime
        assert self.rt is not None
        self.gpu, self.ram_capacity, self.disk_left, self.present = gpu, ram_capacity, disk_left, present
        self.capacity = gib(gpu.total)
        self.reserved = gib(gpu.reserved)
        self.held = list(held or [])  # other processes' and resident features' VRAM: not the model's to use
        self.usable = self.capacity - self.reserved - self.c.cuda_context_gib - sum(h.gib for h in self.held)
        self.headroom = max(self.c.headroom_min_gib, self.c.headroom_fraction * self.usable)
        self.budget = self.usable - self.headroom

    def _role_gib(self, role: str) -> float:
        key = self.feature.roles.get(role)
        return gib(self.files[key].size) if key else 0.0

    def fit(self, variant: Variant, mode: str, min_swap: int = 0, cap_gib: float | None = None) -> Fit:
        """Size `variant` in `mode`; model offload swaps the fewest blocks (at least `min_swap`) whose sampling peak
        fits the budget (or `cap_gib`, if lower). The peak is the largest of the phases (see `phases`)."""
        rt = self.rt
        assert rt is not None and variant.dit is not None
        dit_bytes = self.files[variant.dit].size
        dit, nonblock, block, lora, activations, _ = self._sizes(variant)

        def resident(swap: int) -> float:
            prefetched = 1 if 0 < swap else 0
            return nonblock + block * (rt.blocks - swap + prefetched if swap < rt.blocks else 1)

        def sampling(swap: int) -> float:
            return resident(swap) + lora + activations

        if mode == FULL:
            swap = 0
        elif mode == SEQUENTIAL:
            swap = rt.blocks
        else:
            limit = self.budget if cap_gib is None else min(self.budget, cap_gib)
            swap = next((n for n in range(min_swap, rt.blocks + 1) if sampling(n) <= limit), rt.blocks + 1)
        shown_swap = min(swap, rt.blocks)
        tiled = self.capacity < self.c.vae_tiling_below_gib
        # Loading to the GPU (main_device) keeps the model there between nodes and prompts: loading it once with a
        # merged LoRA needs a second copy, and the next prompt's text encoder and pose models run beside it. Only
        # where all of that fits; else offload_device, which frees the GPU for them after sampling.
        main_device = False
        if shown_swap == 0:
            loaded = max(self.phases(variant, 0, main_device=True, text_encoder_on_gpu=True).values())
            main_device = loaded <= self.budget or (mode == FULL and loaded <= self.usable)
        text_encoder = self._role_gib("text_encoder") + rt.text_encoder_overhead_gib
        on_gpu_with = dit + lora if main_device else 0.0
        te_device = "gpu" if text_encoder + self._role_gib("clip_vision") + on_gpu_with <= self.budget else "cpu"
        phases = self.phases(variant, shown_swap, main_device, te_device == "gpu")
        phase, peak_gib = max(phases.items(), key=lambda item: item[1])
        problems: list[str] = []
        warnings: list[str] = []
        if swap > rt.blocks or peak_gib > self.usable:
            problems.append(f"{variant.name} needs {peak_gib:.1f} GiB of VRAM ({phase}) even with "
                            f"{shown_swap} of {rt.blocks} blocks swapped; {self.usable:.1f} GiB usable")
        elif peak_gib > self.budget:
            warnings.append(f"{variant.name} in mode {mode} needs {peak_gib:.1f} GiB ({phase}) of {self.usable:.1f} "
                            f"GiB usable, leaving less than {self.headroom:.1f} GiB headroom: expect CUDA out of "
                            "memory")

        swapped_bytes = int(dit_bytes * (1 - rt.nonblock_fraction) * shown_swap / rt.blocks)
        te_bytes = self.files[self.feature.roles["text_encoder"]].size if te_device == "cpu" and "text_encoder" in self.feature.roles else 0
        # The loader reads the whole model through RAM before moving blocks to the GPU.
        ram_need = int(self.c.ram_baseline_gib * GIB) + max(dit_bytes, swapped_bytes + te_bytes)
        if ram_need > self.ram_capacity:
            what = "offloaded weights" if shown_swap else "the loader reads the whole model through RAM"
            problems.append(f"{variant.name} needs {ram_need / GIB:.1f} GiB of RAM ({what} + ComfyUI); "
                            f"{self.ram_capacity / GIB:.1f} GiB usable")
        disk_need = sum(self.files[k].size for k in variant.files if self.files[k].dest not in self.present)
        if disk_need and disk_need > self.disk_left:
            problems.append(f"{variant.name} needs {disk_need / GIB:.1f} GiB more disk; "
                            f"{max(self.disk_left, 0) / GIB:.1f} GiB left after the other downloads")

        others = ", ".join(f"{name} {value:.1f}" for name, value in phases.items() if name != phase)
        lines = [BudgetLine("driver reserved", round(self.reserved, 2), "NVML memory v2"),
                 BudgetLine("CUDA context", self.c.cuda_context_gib, "ComfyUI's process at idle, measured on H200"),
                 *self.held]
        if phase == "sampling":
            lines.append(BudgetLine(f"DiT {variant.name} resident", round(resident(shown_swap), 2),
                                    f"{rt.blocks - shown_swap} of {rt.blocks} blocks"
                                    + (" + 1 prefetched" if 0 < shown_swap < rt.blocks else "") + f" of {dit:.1f} GiB"))
            if lora:
                lines.append(BudgetLine("LoRA (unmerged)", round(lora, 2), self.files[rt.lora_file].name))
            lines.append(BudgetLine("activations", round(activations, 2),
                                    f"sampling at 832x480, 81 frames; peak phase (other phases: {others} GiB)"))
        else:
            lines.append(BudgetLine(f"{phase} (peak phase)", round(peak_gib, 2),
                                    f"{self._phase_note(phase, variant.name, dit, tiled)}; other phases: {others} GiB"))
        lines.append(BudgetLine("headroom", round(self.headroom, 2),
                                f"max({self.c.headroom_min_gib} GiB, {self.c.headroom_fraction:.0%} of usable)"))
        budget = VramBudget(feature=self.feature.name, capacity_gib=round(self.capacity, 2), lines=tuple(lines))
        offload = FULL if shown_swap == 0 else SEQUENTIAL if shown_swap == rt.blocks else MODEL_OFFLOAD
        if mode in (FULL, SEQUENTIAL):
            offload = mode
        return Fit(variant=variant, offload=offload, swap=shown_swap, budget=budget, peak_gib=peak_gib,
                    swapped_bytes=swapped_bytes, ram_need=ram_need, disk_need=disk_need,
                    text_encoder_device=te_device, problems=problems, warnings=warnings, main_device=main_device)

    def _sizes(self, variant: Variant) -> tuple[float, float, float, float, float, bool]:
        """(DiT, non-block part, one block, unmerged LoRA, activations) in GiB, and whether the LoRA is merged."""
        rt = self.rt
        assert rt is not None and variant.dit is not None
        dit = gib(self.files[variant.dit].size)
        merged = variant.family in ("bf16", "fp16")  # LoRAs merge only into full-precision weights
        lora = 0.0 if merged or not rt.lora_file else gib(self.files[rt.lora_file].size)
        activations = variant.activation_gib if variant.activation_gib is not None else rt.activation_gib
        return (dit, dit * rt.nonblock_fraction, dit * (1 - rt.nonblock_fraction) / rt.blocks, lora, activations,
                merged)

    def phases(self, variant: Variant, swap: int, main_device: bool, text_encoder_on_gpu: bool) -> dict[str, float]:
        """GPU memory (GiB, without driver reserve and CUDA context) of each phase of the shipped workflows, in the
        order they run: text encoder, pose models, loading the DiT, sampling, VAE decode. A model loaded to the GPU
        (main_device) stays there through all of them (and through the next prompt's text and pose phases); an
        offloaded one leaves it after sampling."""
        rt = self.rt
        assert rt is not None
        dit, nonblock, block, lora, activations, merged = self._sizes(variant)
        kept = dit + lora if main_device else 0.0
        phases: dict[str, float] = {}
        if text_encoder_on_gpu:
            phases["text encoder"] = self._role_gib("text_encoder") + rt.text_encoder_overhead_gib + kept
        phases["pose models"] = rt.pose_gib + kept
        if main_device:
            phases["loading"] = dit * (rt.merged_load_factor if merged and rt.lora_file else 1.0) + lora
        prefetched = 1 if 0 < swap else 0
        phases["sampling"] = (nonblock + block * (rt.blocks - swap + prefetched if swap < rt.blocks else 1) + lora
                              + activations)
        tiled = self.capacity < self.c.vae_tiling_below_gib
        phases["VAE decode"] = (rt.decode_tiled_gib if tiled else rt.decode_gib) + kept
        return phases

    @staticmethod
    def _phase_note(phase: str, variant: str, dit: float, tiled: bool) -> str:
        return {"loading": f"DiT {variant} ({dit:.1f} GiB) loaded to the GPU with the LoRA merged into a second copy",
                "VAE decode": f"{'tiled' if tiled else 'untiled'} decode of 81 frames at 832x480 beside the DiT",
                "pose models": "ViTPose-H + YOLOv10m on onnxruntime's CUDA provider (est.)",
                "text encoder": "umt5-xxl on the GPU"}.get(phase, phase)

    def light(self, fit: Fit) -> bool:
        """Swaps no more than `max_swap_fraction` of the blocks: what auto prefers, and what an explicit choice is
        warned against exceeding."""
        return fit.swap <= self.c.max_swap_fraction * self.rt.blocks  # type: ignore[union-attr]

    def pick(self, candidates: list[Variant], mode: str, prefer_light_swap: bool) -> tuple[Fit | None, list[Fit]]:
        """Best feasible fit (quality first, avoiding heavy swapping when asked), and every fit tried."""
        search_mode = MODEL_OFFLOAD if mode == "auto" else mode
        fits = [self.fit(v, search_mode) for v in candidates]
        feasible = [f for f in fits if f.feasible]
        if mode == FULL:
            resident = [f for f in feasible if not f.warnings]
            return (resident or feasible or [None])[0], fits
        if prefer_light_swap:
            light = [f for f in feasible if self.light(f)]
            if light:
                return light[0], fits
            if feasible:
                return min(feasible, key=lambda f: f.swapped_bytes), fits
            return None, fits
        return (feasible or [None])[0], fits


def configuration_peak(catalog: Catalog, gpu: Gpu, feature: str, variant: str, blocks_to_swap: int,
                       main_device: bool, text_encoder_on_gpu: bool) -> tuple[str, float]:
    """The peak phase of one fixed configuration and its GiB with the driver reserve and the CUDA context: what
    bench/gpu_results.py compares with a measured run of that configuration."""
    sizer = Sizer(catalog.features[feature], catalog, gpu, ram_capacity=1 << 60, disk_left=1 << 60, present=())
    phases = sizer.phases(catalog.features[feature].variants[variant], blocks_to_swap, main_device,
                          text_encoder_on_gpu)
    phase, peak = max(phases.items(), key=lambda item: item[1])
    return phase, peak + sizer.reserved + catalog.planner.cuda_context_gib
