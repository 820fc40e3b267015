"""README stays true: its configuration reference matches the code, and CI runs the test command it documents."""

import re
from pathlib import Path

import pytest

from supervisor.plan.catalog_load import load_catalog
from supervisor.plan.settings import variable_defaults

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| (?:`([^`]*)`|\(empty\)) \|")


def readme_variables() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} documented twice"
            found[match.group(1)] = match.group(2) or ""
    return found


def code_variables() -> dict[str, str]:
    return variable_defaults(load_catalog())


def test_configuration_reference_matches_the_code():
    documented, declared = readme_variables(), code_variables()
    assert sorted(set(declared) - set(documented)) == [], "declared in code but not in README"
    assert sorted(set(documented) - set(declared)) == [], "in README but not read by the code"
    wrong = {name: (documented[name], declared[name]) for name in declared if documented[name] != declared[name]}
    assert wrong == {}, "README default differs from the code (readme, code)"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("Run the tests:", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", quick, re.S).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci], f"{command!r} not run by .ci/run"


# --- the SteadyDancer tier table ---------------------------------------------------------------------------------

TIER_COLUMNS = ("card", "cls", "prd", "plan", "swap", "load", "peak", "total_peak", "flags", "source")
MEASURED = re.compile(r"^measured on NVIDIA H200( \(emulated\))?, (?P<date>\d{4}-\d\d-\d\d): (?P<gib>[\d.]+) GiB$")


def tier_rows() -> list[dict[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("The SteadyDancer PRD's tier table", 1)[1].split("\n\n", 2)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| card (NVML total) |") and set(lines[1]) <= set("|- ")
    rows = []
    for line in lines[2:]:
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(TIER_COLUMNS), f"tier table row with {len(cells)} cells: {line}"
        row = dict(zip(TIER_COLUMNS, cells))
        card = re.match(r"^(.+) \(([\d.]+) GiB\)$", row["card"])
        assert card, row["card"]
        row["card"], row["total"] = card.group(1), card.group(2)
        rows.append(row)
    return rows


def test_tier_table_is_what_the_planner_plans_and_says_where_each_figure_comes_from():
    import json

    from supervisor.plan import hardware as hw
    from supervisor.plan.planner import make_plan
    from supervisor.plan.environment import load_settings

    catalog = load_catalog()
    ram = 128 * 2**30
    base = hw.Hardware(gpus=(), ram_total=ram, ram_available=ram, disk_free=2 * 10**12, disk_path="/workspace")
    results = sorted((REPO / "bench" / "results").glob("gpu-classes-*.json"))
    runs = [c for path in results for c in json.loads(path.read_text())["classes"]]
    rows = tier_rows()
    assert len(rows) >= 8
    for row in rows:
        plan = make_plan(load_settings({}, catalog), catalog, hw.simulate(base, gpu=row["card"]))
        choice = plan.model("steadydancer")
        (budget,) = plan.vram_budget
        headroom = next(line.gib for line in budget.lines if line.item == "headroom")
        family = {"bf16": "bf16", "fp8": "fp8"}.get(choice.variant, choice.variant.replace("gguf:", "GGUF "))
        assert row["plan"].startswith(family), (row["card"], choice.variant)
        assert ("block swap" in row["plan"]) == (choice.offload == "model_cpu_offload"), row["card"]
        assert int(row["swap"]) == choice.knobs.blocks_to_swap, row["card"]
        assert row["load"] == {"main_device": "GPU", "offload_device": "RAM"}[choice.knobs.load_device], row["card"]
        assert float(row["peak"]) == pytest.approx(budget.total_gib - headroom, abs=0.051), row["card"]
        assert float(row["total_peak"]) == pytest.approx(budget.total_gib, abs=0.051), row["card"]
        assert float(row["total"]) == pytest.approx(plan.gpu.total / 2**30, abs=0.005)
        flags = [f for f in plan.comfyui_args if f in ("--highvram", "--lowvram")]
        assert row["flags"].replace("`", "").split() == flags, row["card"]
        if row["source"] == "estimated":
            continue
        measured = MEASURED.match(row["source"])
        assert measured, f"{row['card']}: source must be 'estimated' or 'measured on NVIDIA H200 ..., DATE: N GiB'"
        # A measured row names a run of exactly this plan, in bench/results, and its peak.
        same = [r for r in runs if r["card"] == plan.gpu.name and r["plan_now_is_this_run"] and r["completed"]]
        assert same, f"{row['card']}: no completed run of this plan in bench/results"
        assert any(abs(r["measured_peak_bytes"] / 2**30 - float(measured["gib"])) < 0.006 for r in same)
        assert all(r["variant"] == choice.variant and r["blocks_to_swap"] == choice.knobs.blocks_to_swap for r in same)
