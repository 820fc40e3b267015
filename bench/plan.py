"""Planning speed: in process for the full catalogue (goal < 20 ms) and `supervisor plan` as a whole process.

The baseline measured in the same run is the bare interpreter start (`python -c pass`) and the import of the
package, so the process figure shows what the supervisor itself adds.

    python bench/plan.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.plan import hardware as hw  # noqa: E402
from supervisor.plan.catalog_load import load_catalog  # noqa: E402
from supervisor.plan.planner import make_plan  # noqa: E402
from supervisor.plan.environment import load_settings  # noqa: E402

GOAL_IN_PROCESS_MS = 20.0


def every_feature_on(catalog) -> dict[str, str]:
    env = {f.switch: "true" for f in catalog.features.values()}
    env["CIVITAI_LORAS"] = "1,2,3"
    env["ILLUSTRIOUS_LORAS"] = "4"
    env["CONTROLNET_MODELS"] = "canny,depth,openpose,lineart,normalbae"
    return env


def time_in_process(rounds: int) -> tuple[float, float]:
    """Median ms of catalogue load + settings + plan, and of the plan alone, with every feature enabled."""
    base = hw.Hardware(gpus=(), ram_total=256 * 2**30, ram_available=256 * 2**30, disk_free=4 * 10**12,
                       disk_path="/workspace")
    hardware = hw.simulate(base, gpu="RTX 4090")
    whole, plan_only = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        catalog = load_catalog()
        settings = load_settings(every_feature_on(catalog), catalog)
        t1 = time.perf_counter()
        make_plan(settings, catalog, hardware)
        t2 = time.perf_counter()
        whole.append((t2 - t0) * 1000)
        plan_only.append((t2 - t1) * 1000)
    return statistics.median(whole), statistics.median(plan_only)


def time_process(argv: list[str], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--process-rounds", type=int, default=10)
    args = parser.parse_args()
    whole, plan_only = time_in_process(args.rounds)
    bare = time_process([sys.executable, "-c", "pass"], args.process_rounds)
    imported = time_process([sys.executable, "-c", "import supervisor.cli"], args.process_rounds)
    full = time_process([sys.executable, "-m", "supervisor", "plan", "--gpu", "RTX 4090"], args.process_rounds)
    rows = [
        ("plan only, every feature (in process)", plan_only, f"< {GOAL_IN_PROCESS_MS:.0f} ms",
         f"{plan_only / GOAL_IN_PROCESS_MS:.2f} of goal"),
        ("catalogue + settings + plan (in process)", whole, f"< {GOAL_IN_PROCESS_MS:.0f} ms",
         f"{whole / GOAL_IN_PROCESS_MS:.2f} of goal"),
        ("baseline: python -c pass", bare, "-", "1.00"),
        ("baseline: import supervisor.cli", imported, "-", f"{imported / bare:.2f}x bare"),
        ("supervisor plan --gpu 'RTX 4090' (process)", full, "-", f"{full / bare:.2f}x bare"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'median ms':>10}  {'goal':>8}  ratio")
    for name, value, goal, ratio in rows:
        print(f"{name:<{width}}  {value:>10.2f}  {goal:>8}  {ratio}")
    verdict = "MET" if whole < GOAL_IN_PROCESS_MS else "MISSED"
    print(f"in-process goal ({GOAL_IN_PROCESS_MS:.0f} ms for the full catalogue): {verdict}")


if __name__ == "__main__":
    main()
