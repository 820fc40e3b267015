"""(Settings, Catalog, Hardware, files present) -> Plan. A pure function: no I/O, no clock, no environment.

Sizing rule for a block-swapped DiT (ComfyUI-WanVideoWrapper), all in GiB computed from bytes (the constants were
measured on an H200 emulating each card class: bench/gpu_classes.py):

    usable      = NVML total - driver reserved - CUDA context
    budget      = usable - headroom                (headroom = max(min, fraction * usable))
    sampling(N) = non-block weights + (blocks - N [+1 prefetched]) * block size + unmerged LoRA + activations
    peak        = max(pose models, loading, sampling(N), VAE decode, text encoder), where a model loaded to the GPU
                  (main_device, N = 0 only) stays there through every phase and loads with a second copy when a LoRA
                  is merged into it; main_device is used only when that fits, else offload_device

`auto` walks the variants best-first and takes the first whose smallest N fits the budget with at most
`max_swap_fraction` of the blocks swapped, whose swapped blocks fit in RAM and whose files fit on disk. If none
does, it takes the feasible variant that swaps the fewest bytes; if nothing is feasible the plan has an error.
"""

from __future__ import annotations

import math
from typing import Collection, Iterable, Mapping

from .catalog import Catalog, Feature, FileSpec, Variant
from .features import (coexistence_warnings, describe, feature_vram, held_lines, occupied_bytes, occupied_warning,
                           refusal)
from .hardware import GIB, MIB, Gpu, Hardware
from .types import (FULL, MODEL_OFFLOAD, ON_DEMAND, SEQUENTIAL, SKIPPED, BudgetLine, Download, ModelChoice, Plan,
                   ResourceCheck, Step, VramBudget, WanKnobs, gib)
from .settings import Settings
from .sizing import Fit, Sizer

# Flags of ComfyUI's mutually exclusive VRAM group (comfy/cli_args.py): two of them make argparse exit 2.
VRAM_STATE_FLAGS = ("--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu")
VRAM_CLASSES_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 180, 192)
TIERS = ("consumer", "prosumer", "datacenter")
CIVITAI_DOWNLOAD = "https://civitai.com/api/download/models/"


def vram_class(total_bytes: int) -> str:
    """The marketing class of a card: the nearest class in ratio, so 79.65 GiB (H100) and 80 GiB (A100) are '80 GB'."""
    value = total_bytes / GIB
    if value <= 0:
        return "none"
    best = min(VRAM_CLASSES_GB, key=lambda c: abs(math.log(value / c)))
    return f"{best} GB"


def gpu_tier(settings: Settings, gpu: Gpu | None, catalog: Catalog) -> str:
    if settings.gpu_tier != "auto":
        return settings.gpu_tier
    mib = gpu.total / MIB if gpu else 0
    c = catalog.planner
    return "datacenter" if mib >= c.tier_datacenter_mib else "prosumer" if mib >= c.tier_prosumer_mib else "consumer"


# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------


def make_plan(settings: Settings, catalog: Catalog, hardware: Hardware, present: Collection[str] = frozenset(),
              degrade: Mapping[str, int] | None = None) -> Plan:
    """Decide variants, offload, downloads and ComfyUI flags. `present` holds the dests already verified on disk;
    `degrade[feature] = k` takes the k-th fallback step (after k out-of-memory exits)."""
    degrade = dict(degrade or {})
    gpu = hardware.main_gpu()
    tier = gpu_tier(settings, gpu, catalog)
    warnings: list[str] = [*hardware.warnings, *settings.warnings]
    errors: list[str] = []
    models: list[ModelChoice] = []
    requested: dict[str, list[str]] = {}  # file key -> features
    extra_specs: dict[str, FileSpec] = {}

    def need(keys: Iterable[str], feature: str) -> None:
        for key in keys:
            requested.setdefault(key, [])
            if feature not in requested[key]:
                requested[key].append(feature)

    active: list[Feature] = []
    for feature in catalog.features.values():
        selection = settings.features.get(feature.name)
        if not selection or not selection.enabled:
            continue
        skip = _skip_reason(feature, settings, catalog, gpu, tier)
        if skip and feature.requires and not selection.explicit:
            continue  # a default-on add-on (illustrious embeddings) of a feature that is off: nothing to say
        refused = refusal(feature, selection.variant)
        if refused and not skip:
            skip = f"refused, nothing downloaded: {refused}"
        if skip:
            models.append(ModelChoice(feature.name, selection.variant, SKIPPED, skip))
            warnings.append(f"{feature.switch}: {skip}")
            continue
        active.append(feature)
    if gpu is not None and occupied_warning(gpu, catalog.planner.cuda_context_gib):
        warnings.append(occupied_warning(gpu, catalog.planner.cuda_context_gib))
    held = held_lines(gpu, [(f, settings.features[f.name].variant) for f in active if f.resident]) if gpu else []

    # Fixed files first, so the variant choice knows how much disk is left.
    for feature in active:
        selection = settings.features[feature.name]
        need(feature.files, feature.name)
        if feature.runtime is None:
            if feature.multi_choice:
                for choice in selection.choices:
                    need(feature.variants[choice].files, feature.name)
            elif selection.variant:
                for variant in feature.candidates(selection.variant)[:1]:
                    need(variant.files, feature.name)
        if feature.dynamic:
            for version in selection.choices:
                spec = _civitai_spec(feature, version)
                extra_specs[spec.key] = spec
                need([spec.key], feature.name)
    specs = {**catalog.files, **extra_specs}
    fixed_missing = sum(specs[k].size for k in requested if specs[k].dest not in present)
    disk_allowance = hardware.disk_free - int(settings.disk_reserve_gb * 1e9)
    ram_capacity = int(hardware.ram_total * (1 - catalog.planner.ram_headroom_fraction))

    budgets: list[VramBudget] = []
    ram_needs: list[int] = []
    unrunnable = False
    for feature in active:
        selection = settings.features[feature.name]
        if feature.runtime is not None and gpu is not None:
            choice, budget, files, ram_need, problems, notes = _plan_runtime(
                feature, selection.variant, settings, catalog, gpu, ram_capacity,
                disk_allowance - fixed_missing, present, degrade.get(feature.name, 0), held)
            models.append(choice)
            warnings.extend(notes)
            errors.extend(problems)
            if problems:
                # It cannot run here: none of its files are worth downloading (text encoder, pose models, ...).
                unrunnable = True
                for key in list(requested):
                    if feature.name in requested[key]:
                        requested[key].remove(feature.name)
                    if not requested[key]:
                        del requested[key]
                        if specs[key].dest not in present:
                            fixed_missing -= specs[key].size
            if budget:
                budgets.append(budget)
            if ram_need:
                ram_needs.append(ram_need)
            need(files, feature.name)
            fixed_missing += sum(specs[k].size for k in files if specs[k].dest not in present)
        else:
            models.append(_plan_on_demand(feature, selection, gpu, warnings, catalog, held))
    models = describe(models, catalog, settings.features)
    if gpu is not None:
        free_gib = gib(gpu.usable - occupied_bytes(gpu)) - catalog.planner.cuda_context_gib
        warnings.extend(coexistence_warnings(models, budgets, catalog, gpu, free_gib))

    downloads = tuple(Download.from_spec(specs[k], tuple(fs), specs[k].dest in present) for k, fs in requested.items())
    missing = sum(d.size for d in downloads if not d.present)
    disk = ResourceCheck(need=missing, available=max(disk_allowance, 0), fits=not missing or missing <= disk_allowance,
                         detail=f"{missing / GIB:.1f} GiB to download; {hardware.disk_free / GIB:.1f} GiB free at "
                                f"{hardware.disk_path}, {settings.disk_reserve_gb:g} GB kept free")
    if not missing and disk_allowance < 0:
        # Every file is in place: the reserve protects downloads, and there are none. Outputs share the volume on
        # RunPod, so a full volume must not keep a complete pod from becoming ready.
        warnings.append(f"disk: only {hardware.disk_free / GIB:.1f} GiB free at {hardware.disk_path}, less than "
                        f"DISK_RESERVE_GB={settings.disk_reserve_gb:g}; nothing needs downloading, but outputs may "
                        "fail to save: free some space")
    if not disk.fits:
        errors.append(f"disk: {missing / GIB:.1f} GiB to download but only {max(disk_allowance, 0) / GIB:.1f} GiB "
                      f"may be used on {hardware.disk_path} (free {hardware.disk_free / GIB:.1f} GiB minus "
                      f"DISK_RESERVE_GB={settings.disk_reserve_gb:g}); free {(missing - disk_allowance) / GIB:.1f} "
                      "GiB or disable a feature")
    for download in downloads:
        if download.size == 0 and not download.present:
            warnings.append(f"{download.dest}: size unknown until downloaded; not counted in the disk check")
    ram_need = max(ram_needs, default=0)
    ram = ResourceCheck(need=ram_need, available=ram_capacity, fits=ram_need <= ram_capacity,
                        detail=f"largest model needs {ram_need / GIB:.1f} GiB; {hardware.ram_total / GIB:.1f} GiB "
                               f"RAM ({hardware.ram_source}), {catalog.planner.ram_headroom_fraction:.0%} kept free")
    comfyui_args, arg_notes = comfyui_flags(settings, catalog, gpu, models, unrunnable=unrunnable)
    warnings.extend(arg_notes)
    return Plan(hardware=hardware, gpu=gpu, vram_class=vram_class(gpu.total) if gpu else "none", gpu_tier=tier,
                models=tuple(models), downloads=downloads, comfyui_args=comfyui_args, vram_budget=tuple(budgets),
                disk=disk, ram=ram, warnings=tuple(dict.fromkeys(warnings)), errors=tuple(dict.fromkeys(errors)),
                degrade=degrade)


def _skip_reason(feature: Feature, settings: Settings, catalog: Catalog, gpu: Gpu | None, tier: str) -> str:
    for required in feature.requires:
        sel = settings.features.get(required)
        if not sel or not sel.enabled:
            return f"needs {catalog.features[required].switch}=true as well; skipped"
    if feature.min_tier and TIERS.index(tier) < TIERS.index(feature.min_tier):
        return f"needs GPU_TIER={feature.min_tier} (this pod is {tier}); skipped"
    if gpu is None and (feature.requires_gpu or feature.runtime):
        return "needs a CUDA GPU and none is visible; skipped (nothing downloaded for it)"
    return ""


def _civitai_spec(feature: Feature, version: str) -> FileSpec:
    assert feature.dynamic is not None
    return FileSpec(key=f"civitai_{version}", dest=f"{feature.dynamic.folder}/civitai_{version}.safetensors", size=0,
                    kind="url", url=f"{CIVITAI_DOWNLOAD}{version}", auth_env="CIVITAI_API_KEY")


def _plan_on_demand(feature: Feature, selection, gpu: Gpu | None, warnings: list[str], catalog: Catalog,
                    held: list[BudgetLine]) -> ModelChoice:
    variant = ",".join(selection.choices) if feature.multi_choice else selection.variant
    if gpu is None:
        return ModelChoice(feature.name, variant, ON_DEMAND, "no GPU: ComfyUI runs it on the CPU (--cpu)")
    # What other processes hold is gone already; what the other resident features hold is gone too.
    others = sum(h.gib for h in held if h.item.endswith("(resident)") and not h.item.startswith(f"held: {feature.name}"))
    usable = gib(gpu.usable - occupied_bytes(gpu)) - catalog.planner.cuda_context_gib - others
    need = feature_vram(feature, None if feature.multi_choice else selection.variant)
    how = "stays loaded (resident)" if feature.resident else "its workflow loads it when run"
    if need and need > usable:
        warnings.append(f"{feature.switch}: its workflow peaks at about {need:g} GiB of VRAM, {usable:.1f} GiB usable; "
                        "ComfyUI will load it partially (slow) or fail with out of memory")
        reason = f"{how}; peak about {need:g} GiB, more than the {usable:.1f} GiB usable"
    elif need:
        reason = f"{how}; peak about {need:g} of {usable:.1f} GiB usable"
    else:
        reason = how
    return ModelChoice(feature.name, variant, ON_DEMAND, reason)


def _plan_runtime(feature: Feature, choice: str | None, settings: Settings, catalog: Catalog, gpu: Gpu,
                  ram_capacity: int, disk_left: int, present: Collection[str], degrade: int,
                  held: list[BudgetLine] | None = None):
    """Choose variant and block swap for a DiT model. Returns (choice, budget, files, ram_need, errors, warnings)."""
    sizer = Sizer(feature, catalog, gpu, ram_capacity, disk_left, present, held or [])
    mode = settings.gpu_memory_mode
    explicit = choice not in (None, "auto") and choice in feature.variants
    candidates = feature.candidates(choice)
    pick, tried = sizer.pick(candidates, mode, prefer_light_swap=mode in ("auto", MODEL_OFFLOAD))
    variable = f"{feature.variant_env}={choice}" if choice not in (None, "auto") else None
    if pick is None:
        why = "; ".join(p for f in tried for p in f.problems) or "no variant fits"
        label = variable or f"{feature.variant_env}=auto"
        return (ModelChoice(feature.name, choice, SKIPPED, f"cannot run: {why}"), None, [], 0,
                [f"{feature.name} ({label}, GPU_MEMORY_MODE={mode}): cannot run on {gpu.name} — {why}"], [])
    ladder = _ladder(sizer, pick, feature, explicit)
    reason = _reason(sizer, pick, tried, mode, variable)
    warnings = [f"{feature.name}: {w}" for w in pick.warnings]
    if variable and not sizer.light(pick):
        lighter = next((f for f in (sizer.fit(v, MODEL_OFFLOAD) for v in feature.variants.values())
                        if f.feasible and sizer.light(f)), None)
        hint = f"; {lighter.variant.name} would swap {lighter.swap}" if lighter else ""
        warnings.append(f"{feature.name}: {variable} swaps {pick.swap} of {sizer.rt.blocks} blocks to RAM every step: "  # type: ignore[union-attr]
                        f"slow{hint}")
    if degrade:
        if degrade > len(ladder):
            return (ModelChoice(feature.name, pick.variant.name, SKIPPED, "no lower step left after out-of-memory exits"),
                    None, [], 0, [f"{feature.name}: out of memory on every step of the plan"], [])
        step = ladder[degrade - 1]
        pick = sizer.fit(feature.variants[step.variant], step.offload, min_swap=step.blocks_to_swap)
        reason = (f"out-of-memory fallback {degrade}: {pick.variant.name} with {pick.swap} of "
                  f"{sizer.rt.blocks} blocks swapped")  # type: ignore[union-attr]
        ladder = ladder[degrade:]
    knobs = _knobs(feature, catalog, pick, settings, gpu)
    model = ModelChoice(feature=feature.name, variant=pick.variant.name, offload=pick.offload, reason=reason,
                        knobs=knobs, ladder=tuple(ladder), notes=feature.notes)
    return model, pick.budget, list(pick.variant.files), pick.ram_need, [], warnings


def _ladder(sizer: Sizer, pick: Fit, feature: Feature, explicit: bool) -> list[Step]:
    """Fallbacks after an out-of-memory exit, each with a lower peak than the one before: more offload of the same
    variant, then the best variant of each smaller family (fp8, then GGUF), then everything swapped."""
    blocks = sizer.rt.blocks  # type: ignore[union-attr]
    rungs: list[tuple[Variant, float]] = [(pick.variant, 0.8)]
    if not explicit:
        families = feature.families()
        for family in families[families.index(pick.variant.family) + 1:]:
            members = [v for v in feature.variants.values() if v.family == family and v.dit != pick.variant.dit]
            best = next((v for v in members if sizer.fit(v, MODEL_OFFLOAD).feasible), None)
            if best:
                rungs.append((best, 0.9))
    steps: list[Step] = []
    peak, last = pick.peak_gib, pick
    for variant, factor in rungs:
        fit = sizer.fit(variant, MODEL_OFFLOAD, cap_gib=peak * factor)
        if fit.feasible and fit.peak_gib < peak:
            steps.append(Step(variant.name, fit.offload, fit.swap))
            peak, last = fit.peak_gib, fit
    if last.swap < blocks:
        steps.append(Step(last.variant.name, SEQUENTIAL, blocks))
    return steps


def _reason(sizer: Sizer, pick: Fit, tried: list[Fit], mode: str, variable: str | None) -> str:
    blocks = sizer.rt.blocks  # type: ignore[union-attr]
    where = f"{sizer.gpu.name} ({sizer.usable:.1f} GiB usable, budget {sizer.budget:.1f} GiB)"
    if pick.swap == 0:
        how = f"{pick.variant.name} fits fully resident, peak {pick.peak_gib:.1f} GiB on {where}"
    else:
        how = (f"{pick.variant.name} with {pick.swap} of {blocks} blocks swapped to RAM, peak {pick.peak_gib:.1f} GiB "
               f"on {where}")
    if variable:
        how = f"{variable} chosen by the user: {how}"
    elif mode != "auto":
        how = f"GPU_MEMORY_MODE={mode}: {how}"
    better = [f for f in tried if f is not pick and tried.index(f) < tried.index(pick)]
    if better and not variable:
        first = better[0]
        if first.problems:
            how += f"; {first.variant.name} rejected: {first.problems[0]}"
        else:
            how += (f"; {first.variant.name} would swap {first.swap} of {blocks} blocks "
                    f"(more than {sizer.c.max_swap_fraction:.0%})")
    return how


def _knobs(feature: Feature, catalog: Catalog, fit: Fit, settings: Settings, gpu: Gpu) -> WanKnobs:
    files = {role: catalog.files[key].name for role, key in feature.roles.items()}
    if fit.variant.dit:
        files["model"] = catalog.files[fit.variant.dit].name
    attention = "sdpa" if settings.attention_mode == "auto" else settings.attention_mode
    return WanKnobs(
        files=files, base_precision=fit.variant.precision, quantization=fit.variant.quantization,
        blocks_to_swap=fit.swap, prefetch_blocks=1 if fit.swap else 0,
        load_device="main_device" if fit.main_device else "offload_device", attention_mode=attention,
        text_encoder_device=fit.text_encoder_device, merge_loras=fit.variant.family in ("bf16", "fp16"),
        vae_tiling=gib(gpu.total) < catalog.planner.vae_tiling_below_gib, onnx_device="CUDAExecutionProvider")


def comfyui_flags(settings: Settings, catalog: Catalog, gpu: Gpu | None, models: list[ModelChoice],
                  unrunnable: bool = False) -> tuple[tuple[str, ...], list[str]]:
    """ComfyUI flags that follow from the plan, then COMFYUI_ARGS (a VRAM flag there replaces the plan's). A model
    that cannot run here keeps `--highvram` off: nothing was sized to stay resident."""
    c = catalog.planner
    flags: list[str] = []
    notes: list[str] = []
    vram_flag = ""
    if gpu is None:
        vram_flag = "--cpu"
    else:
        if gpu.cuda_index != 0:
            # ComfyUI's --cuda-device sets CUDA_VISIBLE_DEVICES itself, so it takes the container's own index.
            flags += ["--cuda-device", str(gpu.index)]
        usable = gib(gpu.usable - occupied_bytes(gpu)) - c.cuda_context_gib
        offloads = {m.offload for m in models if m.knobs is not None}
        if SEQUENTIAL in offloads or settings.gpu_memory_mode == SEQUENTIAL or usable < c.lowvram_max_gib:
            vram_flag = "--lowvram"
        elif usable >= c.highvram_min_gib and offloads <= {FULL} and not unrunnable and \
                settings.gpu_memory_mode in ("auto", FULL):
            vram_flag = "--highvram"
    user = list(settings.comfyui_args)
    user_vram = [a for a in user if a in VRAM_STATE_FLAGS]
    if vram_flag and user_vram:
        notes.append(f"COMFYUI_ARGS sets {user_vram[0]}; the plan's {vram_flag} is left out")
        vram_flag = ""
    if len(user_vram) > 1:
        notes.append(f"COMFYUI_ARGS has {' and '.join(user_vram)}, which ComfyUI rejects together (exit 2)")
    if vram_flag:
        flags.append(vram_flag)
    if "--preview-method" not in user:
        flags += ["--preview-method", "auto"]
    return tuple(flags + user), notes
