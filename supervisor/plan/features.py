"""What the plan says about features as units: refusals, node packs and workflows, and VRAM shared between features.

Pure functions the planner calls; no I/O. Three kinds of VRAM use meet on one card:

- memory another process already holds (NVML `used`): nothing of ours can use it, so every budget starts from what
  is free;
- models that stay resident beside SteadyDancer (`resident = true` in the catalogue: a pinned model, a voice
  server): they come off SteadyDancer's budget, line by line;
- models ComfyUI loads on demand in the same process: listed with their peak; a warning names the numbers when one
  of them and SteadyDancer cannot be loaded at once (a workflow that uses both would run out of memory).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

from .catalog import Catalog, Feature
from .hardware import GIB, Gpu
from .types import SKIPPED, BudgetLine, ModelChoice, VramBudget

OCCUPIED_MIN_BYTES = 256 * 2**20  # NVML's `used` below this is the driver's own bookkeeping, not another process
HELD = "held: "  # budget lines for VRAM that is not the runtime model's to use
NOT_PEAK = ("driver reserved", "CUDA context", "headroom")


def refusal(feature: Feature, variant: str | None) -> str:
    """Why the image cannot run this feature (or the chosen variant of it); "" when it can."""
    if feature.refused:
        return feature.refused
    if variant and variant in feature.variants and feature.variants[variant].refused:
        return f"{feature.variant_env}={variant}: {feature.variants[variant].refused}"
    return ""


def pack_labels(feature: Feature, catalog: Catalog) -> tuple[str, ...]:
    """`ComfyUI-GGUF@be2a0833`, ... for the feature's packs ("ComfyUI core" for core nodes)."""
    labels = []
    for pack_id in feature.packs:
        pack = catalog.packs.get(pack_id)
        if pack is None:
            continue
        labels.append(pack.label)
    return tuple(labels)


def feature_vram(feature: Feature, variant: str | None) -> float:
    """Peak VRAM (GiB) while the feature's workflow runs: the chosen variant's figure, else the feature's."""
    if variant and variant in feature.variants and feature.variants[variant].vram_gib:
        return feature.variants[variant].vram_gib
    return feature.vram_gib


def occupied_bytes(gpu: Gpu) -> int:
    """VRAM other processes hold (NVML total - reserved - free); 0 below the driver's noise."""
    used = gpu.total - gpu.reserved - gpu.free
    return used if used >= OCCUPIED_MIN_BYTES else 0


def occupied_warning(gpu: Gpu, cuda_context_gib: float) -> str:
    used = occupied_bytes(gpu)
    if not used:
        return ""
    free = (gpu.total - gpu.reserved - used) / GIB - cuda_context_gib
    return (f"GPU {gpu.cuda_index} ({gpu.name}): {used / GIB:.1f} GiB of VRAM is already used by another process "
            f"(NVML); planning for the {free:.1f} GiB left after it and the CUDA context, not the card's "
            f"{gpu.total / GIB:.1f} GiB")


def held_lines(gpu: Gpu, resident: Sequence[tuple[Feature, str | None]]) -> list[BudgetLine]:
    """Budget lines for what is not SteadyDancer's to use: other processes, then resident features."""
    lines = []
    used = occupied_bytes(gpu)
    if used:
        lines.append(BudgetLine(f"{HELD}other processes", round(used / GIB, 2), "NVML used memory at start"))
    for feature, variant in resident:
        label = f"{feature.name} {variant}" if variant else feature.name
        lines.append(BudgetLine(f"{HELD}{label} (resident)", feature_vram(feature, variant),
                                f"{feature.switch}: stays loaded beside it (catalogue: resident)"))
    return lines


def describe(models: Iterable[ModelChoice], catalog: Catalog, selections) -> list[ModelChoice]:
    """Each ModelChoice with its feature's packs, workflow and peak VRAM filled in."""
    out = []
    for model in models:
        feature = catalog.features[model.feature]
        selection = selections.get(model.feature)
        variant = selection.variant if selection else None
        workflow = feature.workflow or (f"none: {feature.workflow_note}" if feature.workflow_note else "")
        out.append(replace(model, packs=pack_labels(feature, catalog), workflow=workflow,
                           vram_gib=feature_vram(feature, variant)))
    return out


def coexistence_warnings(models: Sequence[ModelChoice], budgets: Sequence[VramBudget], catalog: Catalog,
                         gpu: Gpu | None, usable_gib: float) -> list[str]:
    """A warning, with the numbers, for each on-demand feature that cannot be loaded together with SteadyDancer."""
    if gpu is None:
        return []
    peaks = {b.feature: sum(line.gib for line in b.lines
                            if line.item not in NOT_PEAK and not line.item.startswith(HELD))
             for b in budgets}
    warnings = []
    for runtime, peak in peaks.items():
        for model in models:
            feature = catalog.features[model.feature]
            if model.offload == SKIPPED or model.feature == runtime or feature.resident or not model.vram_gib:
                continue
            together = peak + model.vram_gib
            if together <= usable_gib:
                continue
            smaller = _smaller_variant(feature, model.variant, usable_gib - peak)
            hint = f"; {feature.variant_env}={smaller[0]} ({smaller[1]:g} GiB) would fit beside it" if smaller else ""
            warnings.append(
                f"{feature.switch}: {_label(model)} peaks at {model.vram_gib:g} GiB while it runs and {runtime} at "
                f"{peak:.1f} GiB ({peaks_source(runtime, models)}): {together:.1f} GiB together, more than the "
                f"{usable_gib:.1f} GiB usable on {gpu.name}. Run them in separate prompts (both shipped workflows "
                f"free their VRAM when done); one workflow that loads both runs out of memory{hint}")
    return warnings


def peaks_source(feature: str, models: Sequence[ModelChoice]) -> str:
    model = next((m for m in models if m.feature == feature), None)
    if model is None or model.knobs is None:
        return "its plan"
    return f"{model.variant}, {model.knobs.blocks_to_swap} blocks swapped"


def _label(model: ModelChoice) -> str:
    return f"{model.feature} {model.variant}" if model.variant else model.feature


def _smaller_variant(feature: Feature, current: str | None, room_gib: float) -> tuple[str, float] | None:
    fitting = [(name, v.vram_gib) for name, v in feature.variants.items()
               if name != current and v.vram_gib and not v.refused and v.vram_gib <= room_gib]
    return max(fitting, key=lambda item: item[1]) if fitting else None
