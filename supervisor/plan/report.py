"""Plan -> text a person reads in a terminal, and -> log events a pod log keeps. No secrets ever reach a Plan, so
none can show here."""

from __future__ import annotations

import shutil
import textwrap

from .. import logs
from .hardware import GIB, format_size
from .types import Plan


def _width() -> int:
    """The terminal's width (COLUMNS, or the tty's), 100 when not a terminal; at least 60."""
    return max(60, shutil.get_terminal_size(fallback=(100, 24)).columns)


def _wrap(text: str, width: int, first: str = "", rest: str = "    ") -> list[str]:
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def _table(headers: list[str], rows: list[list[str]], width: int) -> list[str]:
    head, groups = _table_groups(headers, rows, width)
    return head + [line for group in groups for line in group]


def _table_groups(headers: list[str], rows: list[list[str]], width: int) -> tuple[list[str], list[list[str]]]:
    """Columns sized to their content; the last column wraps within `width` (or goes on its own indented lines
    when the others leave it too little room). Returns the header lines and, per row, its lines."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    start = sum(widths[:-1]) + 2 * (len(widths) - 1)
    room = width - start
    below = room < 24  # the last column goes under the row
    last = min(widths[-1], width - 4 if below else room)
    head = ["  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths)) + ("" if below else "  " + headers[-1]),
            "  ".join("-" * w for w in widths[:-1]) + ("" if below else "  " + "-" * last)]
    if below:
        head[0] = head[0].rstrip() + f"  ({headers[-1]} below)"
    groups = []
    for r in rows:
        first = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)).rstrip()
        if below:
            groups.append([first] + (_wrap(r[-1], width, "    ", "    ") if r[-1] else []))
            continue
        lines = _wrap(r[-1], room, "", "") if r[-1] else [""]
        groups.append([(first.ljust(start) + lines[0]).rstrip()] + [(" " * start + line).rstrip() for line in lines[1:]])
    return [line.rstrip() for line in head], groups


def _size(n_bytes: int) -> str:
    return "?" if n_bytes == 0 else format_size(n_bytes)


def render(plan: Plan, command: tuple[str, ...] = (), width: int | None = None) -> str:
    """The plan for a terminal: every line within `width` (the terminal's), long reasons on indented lines."""
    width = width or _width()
    hw = plan.hardware
    out: list[str] = []
    out += _wrap(f"Hardware  {hw.summary()}", width, "", " " * 10)
    if plan.gpu:
        g = plan.gpu
        out += _wrap(f"GPU       {g.name}: {g.total:,} B = {g.total / GIB:.2f} GiB, reserved {g.reserved / GIB:.2f} "
                     f"GiB, CC {g.compute_capability[0]}.{g.compute_capability[1]}, class {plan.vram_class}, "
                     f"tier {plan.gpu_tier}, cuda:{g.cuda_index}", width, "", " " * 10)
    out.append("")
    out.append("Models")
    if plan.models:
        rows = [[m.feature, m.variant or "-", m.offload] for m in plan.models]
        table = _table(["feature", "variant", "offload"], rows, width)
        out += table[:2]
        for line, model in zip(table[2:], plan.models):
            out.append(line)
            out += _wrap(model.reason, width, "    ", "    ")
    else:
        out.append("  (no feature enabled)")
    for model in plan.models:
        if model.knobs:
            k = model.knobs
            out += _wrap(f"{model.feature} workflow knobs: model={k.files.get('model')} precision={k.base_precision} "
                         f"quantization={k.quantization} blocks_to_swap={k.blocks_to_swap} "
                         f"prefetch={k.prefetch_blocks} load_device={k.load_device} attention={k.attention_mode} "
                         f"text_encoder_device={k.text_encoder_device} vae_tiling={k.vae_tiling}", width, "  ")
        if model.ladder:
            steps = " -> ".join(f"{s.variant}/{s.offload}/{s.blocks_to_swap}" for s in model.ladder)
            out += _wrap(f"{model.feature} after out of memory: {steps}", width, "  ")
    if plan.remembered:
        out += _wrap(remembered_text(plan), width, "  ")
    rows = [[m.feature, f"{m.vram_gib:g}" if m.vram_gib else "-", m.workflow or "-"] for m in plan.models]
    if rows:
        out.append("")
        out.append("Features: node packs (pinned) and minimal workflows")
        head, groups = _table_groups(["feature", "peak GiB", "workflow (workflows/)"], rows, width)
        out += head
        for model, group in zip(plan.models, groups):  # each row, then its node packs on indented lines
            out += group
            out += _wrap(f"node packs: {', '.join(model.packs) or '-'}", width, "    ", "      ")
    for budget in plan.vram_budget:
        out.append("")
        out.append(f"VRAM budget: {budget.feature} (GiB)")
        rows = [[line.item, f"{line.gib:6.2f}", line.note] for line in budget.lines]
        rows.append(["total", f"{budget.total_gib:6.2f}",
                     f"of {budget.capacity_gib:.2f} GiB: {'fits' if budget.fits else 'DOES NOT FIT'}"])
        out += _table(["part", "GiB", "note"], rows, width)
    out.append("")
    out.append("Downloads")
    if plan.downloads:
        rows = [[_size(d.size), "present" if d.present else "missing", d.dest] for d in plan.downloads]
        head, groups = _table_groups(["size", "state", "dest (under MODELS_DIR)"], rows, width)
        out += head
        for d, group in zip(plan.downloads, groups):  # each row, then its source and who needs it, indented
            out += group
            out += _wrap(f"from {d.source} (for {', '.join(d.features)})", width, "    ", "      ")
    else:
        out.append("  (none)")
    out += _wrap(f"Disk: {plan.disk.detail}: {'fits' if plan.disk.fits else 'DOES NOT FIT'}", width, "", "      ")
    if plan.ram.need:
        out += _wrap(f"RAM:  {plan.ram.detail}: {'fits' if plan.ram.fits else 'DOES NOT FIT'}", width, "", "      ")
    out.append("")
    out += _wrap("ComfyUI: " + (" ".join(command) if command else " ".join(plan.comfyui_args) or "(no extra flags)"),
                 width, "", "         ")
    if plan.warnings:
        out.append("")
        out.append("Warnings")
        for w in plan.warnings:
            out += _wrap(w, width, "  - ", "    ")
    if plan.errors:
        out.append("")
        out.append("ERRORS (the plan cannot run)")
        for e in plan.errors:
            out += _wrap(e, width, "  - ", "    ")
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
                 reason=model.reason, knobs=knobs, packs=list(model.packs), workflow=model.workflow,
                 vram_gib=model.vram_gib or None)
    for budget in plan.vram_budget:
        log.info("plan.vram_budget", feature=budget.feature, total_gib=budget.total_gib,
                 capacity_gib=budget.capacity_gib, fits=budget.fits)
    log.info("plan.downloads", files=len(plan.downloads), missing=len(plan.missing()),
             missing_bytes=sum(d.size for d in plan.missing()), disk_fits=plan.disk.fits)
    log.info("plan.comfyui_args", args=list(plan.comfyui_args))
    if plan.remembered:
        log.warning("plan.remembered_step_down", degrade=dict(plan.degrade), why=plan.remembered.get("why"),
                    at=plan.remembered.get("at"), message=remembered_text(plan))
    for warning in plan.warnings:
        log.warning("plan.warning", message=warning)
    for error in plan.errors:
        log.error("plan.error", message=error)


def remembered_text(plan: Plan) -> str:
    r = plan.remembered
    steps = ", ".join(f"{feature} {n} step{'s' if n != 1 else ''} down" for feature, n in plan.degrade.items())
    return (f"remembered from an earlier run ({r.get('at')}): {steps} after out of memory ({r.get('why')}); "
            f"to start from the top of the ladder again: `supervisor plan --reset-oom` (or delete {r.get('file')})")


def render_instances(instances: list, plans: list[Plan]) -> str:
    """One ComfyUI per GPU: a table of the instances, then each distinct plan once."""
    rows = []
    for instance, plan in zip(instances, plans):
        gpu = instance.gpu
        choice = ", ".join(f"{m.variant}/{m.offload}/{m.knobs.blocks_to_swap}" for m in plan.models if m.knobs) or "-"
        peak = max((b.total_gib for b in plan.vram_budget), default=0.0)
        rows.append([instance.name, f"{gpu.name} (#{gpu.index})" if gpu else "-", str(instance.port),
                     instance.cuda_visible_devices or "-", choice + (f", peak {peak:.1f} GiB" if peak else "")])
    width = _width()
    out = _wrap(f"Instances: {len(instances)} ComfyUIs, one per GPU (COMFYUI_PER_GPU=true); each plans for its own GPU "
                f"and 1/{len(instances)} of the RAM ({plans[0].hardware.ram_total / GIB:.1f} GiB)", width, "", "  ")
    out.append("")
    out += _table(["instance", "GPU", "port", "CUDA_VISIBLE_DEVICES", "plan"], rows, width)
    shown: dict[str, str] = {}
    for instance, plan in zip(instances, plans):
        text = render(plan)
        out += ["", f"== {instance.name}: {instance.gpu.name if instance.gpu else 'CPU'}, port {instance.port} =="]
        same = shown.get(text)
        out += [f"(the same plan as {same})"] if same else text.rstrip("\n").split("\n")
        shown.setdefault(text, instance.name)
    return "\n".join(out) + "\n"
