"""Combine bench/gpu_classes.py runs into one dated result and check the planner against every measurement.

    python bench/gpu_results.py RUN.json [RUN.json ...] --out bench/results/gpu-classes-DATE-GPU.json

For each measured run of a card class it computes, with the current catalogue, what the planner predicts for the
configuration that ran (variant, blocks swapped, where the model was loaded, where umt5 ran: `configuration_peak`)
and the ratio to the measured peak (NVML per-process peak of ComfyUI plus the card's driver reservation), and the
plan the planner now picks for that card (with 128 GiB of RAM, as the runs). The goal of the planner's constants:
predicted >= measured and predicted <= 1.15 x measured for every run that completed. Prints a table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.plan import hardware as hw  # noqa: E402
from supervisor.plan.catalog_load import load_catalog  # noqa: E402
from supervisor.plan.planner import make_plan  # noqa: E402
from supervisor.plan.environment import load_settings  # noqa: E402
from supervisor.plan.sizing import configuration_peak  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from gpu_measure import wrapper_sampling_memory  # noqa: E402

GIB = 1 << 30
RAM = 128 * GIB
TOLERANCE = 1.15


def plan_now(catalog, key: str) -> dict[str, Any]:
    base = hw.Hardware(gpus=(), ram_total=RAM, ram_available=RAM, disk_free=2 * 10**12, disk_path="/workspace")
    machine = hw.simulate(base, gpu=key)
    plan = make_plan(load_settings({"ENABLE_STEADYDANCER": "true"}, catalog), catalog, machine)
    choice = plan.model("steadydancer")
    budget = plan.vram_budget[0]
    headroom = next(line.gib for line in budget.lines if line.item == "headroom")
    return {"variant": choice.variant, "offload": choice.offload, "blocks_to_swap": choice.knobs.blocks_to_swap,
            "load_device": choice.knobs.load_device, "text_encoder_device": choice.knobs.text_encoder_device,
            "comfyui_args": list(plan.comfyui_args),
            "predicted_peak_bytes": int((budget.total_gib - headroom) * GIB),
            "budget_total_bytes": int(budget.total_gib * GIB), "gpu": machine.gpus[0]}


def entry(catalog, run: dict[str, Any], record: dict[str, Any], tag: str) -> dict[str, Any]:
    key = record["gpu_key"]
    now = plan_now(catalog, key)
    gpu = now.pop("gpu")
    # Where the model was loaded: the runs before the correction loaded every full plan to the GPU.
    load_device = record.get("load_device") or (
        now["load_device"] if tag == "corrected" else "main_device" if record["offload"] == "full" else "offload_device")
    phase, predicted_gib = configuration_peak(catalog, gpu, "steadydancer", record["variant"],
                                              record["blocks_to_swap"] or 0, load_device == "main_device",
                                              record.get("text_encoder_device") == "gpu")
    measured = record.get("measured_peak_bytes")
    predicted = int(predicted_gib * GIB)
    same_plan = all(now[k] == record.get(k, load_device if k == "load_device" else None)
                    for k in ("variant", "offload", "blocks_to_swap", "load_device"))
    out = {
        "card": record["card"], "gpu_key": key, "run": tag, "variant": record["variant"], "offload": record["offload"],
        "blocks_to_swap": record["blocks_to_swap"], "load_device": load_device,
        "text_encoder_device": record.get("text_encoder_device"), "comfyui_args": record.get("comfyui_args"),
        "predicted_peak_bytes": predicted, "predicted_phase": phase,
        "predicted_before_bytes": record["predicted_peak_bytes"],  # the planner's figure when the run was made
        "measured_peak_bytes": measured, "nvml_process_peak_bytes": record.get("nvml_process_peak_bytes"),
        "predicted_over_measured": round(predicted / measured, 3) if measured else None,
        "fits_card": record.get("fits_card", measured <= record["nvml_total"] if measured else None),
        "completed": record.get("completed"), "oom": record.get("oom"), "steps": record.get("steps"),
        "s_per_step": record.get("s_per_step"), "load_s": record.get("load_s"),
        "vae_decode_s": record.get("vae_decode_s"), "text_encode_s": record.get("text_encode_s"),
        "prompt_s": record.get("prompt_s"), "video_bytes": record.get("video_bytes"),
        "torch_max_reserved": record.get("torch_max_reserved"),
        "wrapper_sampling_gib": record.get("wrapper_sampling_gib"),
        "cap_bytes": record.get("cap_bytes"), "nvml_total": record["nvml_total"],
        "plan_now": now, "plan_now_is_this_run": same_plan,
        "prompts": [{k: v for k, v in p.items() if k != "nvml_timeline"} for p in record.get("prompts", [])],
        "source": run["source"],
    }
    if out["completed"] and measured:
        out["within_tolerance"] = measured <= predicted <= TOLERANCE * measured
    return out


def _log_lines(text: str) -> dict[str, list[str]]:
    """ComfyUI's lines per class from a run's log (`===== key` separates the classes' supervisor output)."""
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("===== "):
            key = line.split()[1]
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "comfyui.log":
            out.setdefault(key, []).append(event.get("line", ""))
    return out


def table(classes: list[dict[str, Any]]) -> str:
    def gib(value: Any) -> str:
        return f"{value / GIB:.2f}" if value else "-"

    head = ("card", "run", "plan (variant, offload, swapped, load)", "pred GiB", "meas GiB", "pred/meas", "done",
            "s/step", "load s", "decode s", "prompt s", "video MB", "plan now")
    rows = [head]
    for c in classes:
        now = c["plan_now"]
        rows.append((c["card"], c["run"], f"{c['variant']} {c['offload']} {c['blocks_to_swap']} {c['load_device']}",
                     gib(c["predicted_peak_bytes"]), gib(c["measured_peak_bytes"]),
                     str(c["predicted_over_measured"] or "-"),
                     "OOM" if c["oom"] else "yes" if c["completed"] else "no", str(c["s_per_step"] or "-"),
                     str(c["load_s"] or "-"), str(c["vae_decode_s"] or "-"), str(c["prompt_s"] or "-"),
                     f"{c['video_bytes'] / 1e6:.2f}" if c["video_bytes"] else "-",
                     "this run" if c["plan_now_is_this_run"] else
                     f"{now['variant']} {now['offload']} {now['blocks_to_swap']} {now['load_device']}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    catalog = load_catalog()
    runs, classes = [], []
    logs: list[str] = []
    for path in args.runs:
        run = json.loads(path.read_text())
        tag = "corrected" if "corrected" in path.name else "initial"
        run["source"] = path.name
        log = path.with_suffix(".log.gz")
        if log.exists():
            text = gzip.open(log, "rt").read()
            logs.append(text)
            by_class = _log_lines(text)
            for record in run["classes"]:
                if not record.get("wrapper_sampling_gib") and record["gpu_key"] in by_class:
                    record["wrapper_sampling_gib"] = wrapper_sampling_memory(by_class[record["gpu_key"]])
        runs.append({k: v for k, v in run.items() if k != "classes"})
        classes += [entry(catalog, run, record, tag) for record in run["classes"] if "skipped" not in record]
    classes.sort(key=lambda c: (-c["nvml_total"], c["run"] != "initial"))
    result = {"date": runs[0]["started"][:10], "gpu": runs[0]["gpu"], "runs": runs, "classes": classes,
              "tolerance": TOLERANCE,
              "checked": {c["card"] + " / " + c["run"]: c.get("within_tolerance") for c in classes}}
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if logs:
        with gzip.open(args.out.with_suffix(".log.gz"), "wt") as f:
            f.write("".join(logs))
    text = table(classes)
    args.out.with_suffix(".txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
