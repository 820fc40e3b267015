"""Plan -> text a person reads in a terminal, and -> log events a pod log keeps. No secrets ever reach a Plan, so
none can show here."""

from __future__ import annotations

from .. import logs
from .hardware import GIB, format_size
from .types import Plan


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return out


def _size(n_bytes: int) -> str:
    return "?" if n_bytes == 0 else format_size(n_bytes)


def render(plan: Plan, command: tuple[str, ...] = ()) -> str:
    hw = plan.hardware
    out: list[str] = []
    out.append(f"Hardware  {hw.summary()}")
    if plan.gpu:
        g = plan.gpu
        out.append(f"GPU       {g.name}: {g.total:,} B = {g.total / GIB:.2f} GiB, reserved {g.reserved / GIB:.2f} GiB, "
                   f"CC {g.compute_capability[0]}.{g.compute_capability[1]}, class {plan.vram_class}, "
                   f"tier {plan.gpu_tier}, cuda:{g.cuda_index}")
    out.append("")
    out.append("Models")
    rows = [[m.feature, m.variant or "-", m.offload, m.reason] for m in plan.models]
    out += _table(["feature", "variant", "offload", "reason"], rows) if rows else ["  (no feature enabled)"]
    for model in plan.models:
        if model.knobs:
            k = model.knobs
            out.append(f"  {model.feature} workflow knobs: model={k.files.get('model')} precision={k.base_precision} "
                       f"quantization={k.quantization} blocks_to_swap={k.blocks_to_swap} "
                       f"prefetch={k.prefetch_blocks} load_device={k.load_device} attention={k.attention_mode} "
                       f"text_encoder_device={k.text_encoder_device} vae_tiling={k.vae_tiling}")
        if model.ladder:
            steps = " -> ".join(f"{s.variant}/{s.offload}/{s.blocks_to_swap}" for s in model.ladder)
            out.append(f"  {model.feature} after out of memory: {steps}")
    for budget in plan.vram_budget:
        out.append("")
        out.append(f"VRAM budget: {budget.feature} (GiB)")
        rows = [[line.item, f"{line.gib:6.2f}", line.note] for line in budget.lines]
        rows.append(["total", f"{budget.total_gib:6.2f}",
                     f"of {budget.capacity_gib:.2f} GiB: {'fits' if budget.fits else 'DOES NOT FIT'}"])
        out += _table(["part", "GiB", "note"], rows)
    out.append("")
    out.append("Downloads")
    rows = [[d.dest, _size(d.size), "present" if d.present else "missing", d.source, ",".join(d.features)]
            for d in plan.downloads]
    out += _table(["dest (under MODELS_DIR)", "size", "state", "source", "for"], rows) if rows else ["  (none)"]
    out.append(f"Disk: {plan.disk.detail}: {'fits' if plan.disk.fits else 'DOES NOT FIT'}")
    if plan.ram.need:
        out.append(f"RAM:  {plan.ram.detail}: {'fits' if plan.ram.fits else 'DOES NOT FIT'}")
    out.append("")
    out.append("ComfyUI: " + (" ".join(command) if command else " ".join(plan.comfyui_args) or "(no extra flags)"))
    if plan.warnings:
        out.append("")
        out.append("Warnings")
        out += [f"  - {w}" for w in plan.warnings]
    if plan.errors:
        out.append("")
        out.append("ERRORS (the plan cannot run)")
        out += [f"  - {e}" for e in plan.errors]
    return "\n".join(out) + "\n"


def log_plan(plan: Plan) -> None:
    """One event per decision, so a pod's log explains itself."""
    log = logs.get_logger("planner")
    log.info("plan.hardware", summary=plan.hardware.summary(), vram_class=plan.vram_class, gpu_tier=plan.gpu_tier)
    for model in plan.models:
        knobs = None
        if model.knobs:
            knobs = {"blocks_to_swap": model.knobs.blocks_to_swap, "quantization": model.knobs.quantization,
                     "base_precision": model.knobs.base_precision, "load_device": model.knobs.load_device,
                     "text_encoder_device": model.knobs.text_encoder_device}
        log.info("plan.decision", feature=model.feature, variant=model.variant, offload=model.offload,
                 reason=model.reason, knobs=knobs)
    for budget in plan.vram_budget:
        log.info("plan.vram_budget", feature=budget.feature, total_gib=budget.total_gib,
                 capacity_gib=budget.capacity_gib, fits=budget.fits)
    log.info("plan.downloads", files=len(plan.downloads), missing=len(plan.missing()),
             missing_bytes=sum(d.size for d in plan.missing()), disk_fits=plan.disk.fits)
    log.info("plan.comfyui_args", args=list(plan.comfyui_args))
    for warning in plan.warnings:
        log.warning("plan.warning", message=warning)
    for error in plan.errors:
        log.error("plan.error", message=error)
