#!/usr/bin/env python3
"""Every feature switch on a real ComfyUI (CPU): its node packs import, and its minimal workflow, resolved against
its own plan, is accepted by POST /prompt with empty node_errors.

    python bench/features_check.py --comfyui-dir DIR [--python PY] [--out bench/results/features-check]

DIR is ComfyUI v0.3.64 with every pack of config/packs.toml in custom_nodes/ at its pin; PY is the interpreter with
docker/requirements.lock installed (default: this one). For each feature the script makes the plan with only that
switch on (as on an H100, so no feature is skipped for VRAM), writes small stand-in files under the plan's real
file names into a scratch MODELS_DIR, starts ComfyUI once with --cpu on all of them, and POSTs each workflow. A
refused feature is reported with its reason instead. Validation is the point: the queued prompts are cleared at once
(stand-in weights cannot load). Exit status 0 when every non-refused feature is accepted and nothing failed to
import; without DIR/main.py it prints "skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.plan import hardware as hw  # noqa: E402
from supervisor.plan.catalog_load import load_catalog  # noqa: E402
from supervisor.plan.planner import make_plan  # noqa: E402
from supervisor.plan.environment import load_settings  # noqa: E402
from supervisor.plan.types import SKIPPED  # noqa: E402
from supervisor.run.launch import model_folders  # noqa: E402
from supervisor.workflows import resolve_shipped, workflows_dir  # noqa: E402
from supervisor.workflows.features import load_template, resolve  # noqa: E402
from supervisor.workflows.resolve import DEFAULT_INPUTS  # noqa: E402

START_DEADLINE_S = 300.0


def plan_for(feature, catalog, variant=None):
    env = {f.switch: "false" for f in catalog.features.values()}
    env[feature.switch] = "true"
    if variant:
        env[feature.variant_env] = variant
    for required in feature.requires:
        env[catalog.features[required].switch] = "true"
    if feature.dynamic:
        env[feature.dynamic.env] = "123456"
    base = hw.Hardware(gpus=(), ram_total=256 * 2**30, ram_available=256 * 2**30, disk_free=10**13, disk_path="/")
    settings = load_settings(env, catalog)
    return settings, make_plan(settings, catalog, hw.simulate(base, gpu="h100"))


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    """A real (grey) PNG, so image loaders that open their input at validation have something to open."""
    raw = b"".join(b"\x00" + b"\x80" * (width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_standins(models: Path, downloads) -> int:
    count = 0
    for d in downloads:
        path = models / d.dest
        if d.kind == "snapshot":  # a model folder: what folder-scanning loaders (VibeVoice) recognise
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{}")
            (path / "model.safetensors").write_bytes(b"stand-in")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stand-in weights for validation only\n")
        count += 1
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lock_drift(python: str) -> list[str]:
    """Packages whose installed version differs from docker/requirements.lock (names normalised)."""
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    locked = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            locked[norm(name)] = version
    frozen = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    installed = {norm(p["name"]): p["version"] for p in json.loads(frozen.stdout or "[]")}
    return sorted(f"{name}: locked {v}, installed {installed.get(name, 'none')}"
                  for name, v in locked.items() if installed.get(name, "").split("+")[0] != v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", type=Path, default=os.environ.get("COMFYUI_DIR"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.txt")
    parser.add_argument("--save-node-defs", type=Path,
                        help="write the /object_info entries of every node class the feature workflows use (the "
                             "tests validate the workflows offline against it)")
    args = parser.parse_args(argv)
    if not args.comfyui_dir or not (Path(args.comfyui_dir) / "main.py").is_file():
        print(f"skipped: no ComfyUI at {args.comfyui_dir} (give --comfyui-dir or COMFYUI_DIR)")
        return 0
    comfy = Path(args.comfyui_dir).resolve()
    catalog = load_catalog()
    root = workflows_dir()
    cases, all_downloads = [], {}
    runs = []
    for feature in catalog.features.values():
        # Every variant a user can choose (not SteadyDancer's: the planner picks those, the shipped workflows cover them)
        variants = [None] if feature.auto or not feature.variants else list(feature.variants)
        runs += [(feature, variant) for variant in variants]
    for feature, variant in runs:
        settings, plan = plan_for(feature, catalog, variant)
        choice = plan.model(feature.name)
        case = {"feature": feature.name, "switch": feature.switch + (f" {feature.variant_env}={variant}" if variant else ""),
                "packs": list(choice.packs) if choice else [], "workflow": choice.workflow if choice else ""}
        if choice is None or choice.offload == SKIPPED:
            refused = choice is not None and choice.reason.startswith("refused")
            case.update(status="refused" if refused else "skipped", reason=choice.reason if choice else "")
        elif feature.name == "steadydancer":
            case["prompts"] = {r.name: r.api for r in resolve_shipped(plan, settings)}
        elif feature.workflow:
            selection = settings.features[feature.name]
            choices = selection.choices if feature.multi_choice else ((selection.variant,) if selection.variant else ())
            case["prompts"] = {feature.workflow: resolve(load_template(feature, root), feature, catalog, choices)}
        else:
            case.update(status="no workflow", reason=feature.workflow_note)
        for d in plan.downloads:
            all_downloads[d.dest] = d
        cases.append(case)

    missing_packs = [p.custom_node for p in catalog.packs.values()
                     if p.custom_node and not (comfy / "custom_nodes" / p.custom_node).is_dir()]
    with tempfile.TemporaryDirectory(prefix="features-check-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        standins = write_standins(models, all_downloads.values())
        (scratch / "input").mkdir()
        (scratch / "input" / DEFAULT_INPUTS[0]).write_bytes(png_bytes())
        (scratch / "input" / DEFAULT_INPUTS[1]).write_bytes(b"stand-in video")
        paths = scratch / "extra_model_paths.yaml"
        paths.write_text("features_check:\n" + f"  base_path: {json.dumps(str(models))}\n  is_default: true\n"
                         + "".join(f"  {f}: {json.dumps(f)}\n" for f in model_folders(catalog)))
        for name in ("output", "user", "temp"):
            (scratch / name).mkdir()
        port = free_port()
        log_path = scratch / "comfyui.log"
        command = [args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                   "--extra-model-paths-config", str(paths), "--input-directory", str(scratch / "input"),
                   "--output-directory", str(scratch / "output"), "--user-directory", str(scratch / "user"),
                   "--temp-directory", str(scratch / "temp"), "--database-url", f"sqlite:///{scratch}/comfyui.db"]
        started = time.monotonic()
        # As the supervisor's launch does: comfyui_controlnet_aux reads its weights from MODELS_DIR/annotators.
        env = {**os.environ, "AUX_ANNOTATOR_CKPTS_PATH": str(models / "annotators")}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"ComfyUI exited with {proc.returncode} before answering:\n"
                                         + log_path.read_text()[-3000:])
                    try:
                        client.get("/system_stats", timeout=2).raise_for_status()
                        break
                    except httpx.HTTPError:
                        if time.monotonic() - started > START_DEADLINE_S:
                            raise SystemExit(f"ComfyUI did not answer within {START_DEADLINE_S:.0f} s")
                        time.sleep(0.5)
                ready_s = time.monotonic() - started
                object_info = client.get("/object_info").json()
                used = sorted({n["class_type"] for c in cases for api in c.get("prompts", {}).values() for n in api.values()})
                for case in cases:
                    for name, api in case.pop("prompts", {}).items():
                        response = client.post("/prompt", json={"prompt": api, "client_id": "features-check"})
                        body = response.json() if response.headers.get("content-type", "").startswith(
                            "application/json") else {"text": response.text[:500]}
                        client.post("/queue", json={"clear": True})
                        client.post("/interrupt")
                        ok = response.status_code == 200 and body.get("node_errors") == {}
                        case.setdefault("results", []).append(
                            {"workflow": name, "http": response.status_code, "node_errors": body.get("node_errors"),
                             "error": body.get("error"), "accepted": ok,
                             "nodes": sorted({n["class_type"] for n in api.values()})})
                    if "results" in case:
                        case["status"] = "accepted" if all(r["accepted"] for r in case["results"]) else "REJECTED"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_text = log_path.read_text(errors="replace")
        # DWPreprocessor's own lookup, with the supervisor's environment: it must find the catalogue's files (a
        # download attempt would fail here: no network) under MODELS_DIR/annotators.
        aux = comfy / "custom_nodes" / "comfyui_controlnet_aux"
        lookup = subprocess.run(
            [args.python, "-c", "import sys; sys.path.insert(0, 'src'); "
             "from custom_controlnet_aux.util import custom_hf_download as find; "
             "print('FOUND', find('yzd-v/DWPose', 'dw-ll_ucoco_384.onnx')); "
             "print('FOUND', find('yzd-v/DWPose', 'yolox_l.onnx'))"],
            cwd=aux, env=env, capture_output=True, text=True, timeout=300)
        found = [line.split(" ", 1)[1] for line in lookup.stdout.splitlines() if line.startswith("FOUND ")]
        expected = [str(models / catalog.files[k].dest) for k in ("dwpose_pose", "dwpose_det")]
        annotators_ok = lookup.returncode == 0 and found == expected
    if args.save_node_defs:
        args.save_node_defs.write_text(json.dumps({k: object_info[k] for k in used if k in object_info}, indent=1,
                                                  sort_keys=True) + "\n")
    import_failed = re.findall(r"\(IMPORT FAILED\)[^\n]*", log_text)

    torch = subprocess.run([args.python, "-c", "import torch, sys; print(torch.__version__, sys.version.split()[0])"],
                           capture_output=True, text=True).stdout.split()
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/features_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), ComfyUI --cpu",
        "comfyui": catalog.packs["ComfyUI"].commit, "python": torch[1] if len(torch) > 1 else "?",
        "torch": torch[0] if torch else "?",
        "packs": {p.id: p.commit for p in catalog.packs.values() if p.custom_node},
        "missing_pack_folders": missing_packs, "import_failed": import_failed,
        "lock_drift": lock_drift(args.python), "node_types": len(object_info), "ready_s": round(ready_s, 1),
        "stand_in_files": standins, "controlnet_aux_reads_models_annotators": annotators_ok, "features": cases,
    }
    failures = [c for c in cases if c["status"] in ("REJECTED", "skipped")] + ([{"import_failed": import_failed}] if import_failed
                                                                     else []) + [{"missing": m} for m in missing_packs]
    failures += [] if annotators_ok else [{"controlnet_aux": "does not read MODELS_DIR/annotators"}]
    text = render(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".txt").write_text(text)
    return 1 if failures else 0


def render(result: dict) -> str:
    lines = [f"features check {result['date']}: ComfyUI {result['comfyui'][:8]}, Python {result['python']}, "
             f"torch {result['torch']}, {result['machine']}",
             f"node types: {result['node_types']}; ready in {result['ready_s']} s; IMPORT FAILED: "
             f"{len(result['import_failed'])}; packs missing: {len(result['missing_pack_folders'])}; "
             f"installed versions differing from docker/requirements.lock: {len(result['lock_drift'])}; "
             f"comfyui_controlnet_aux reads MODELS_DIR/annotators: {result['controlnet_aux_reads_models_annotators']}",
             ""]
    for case in result["features"]:
        detail = case.get("reason", "")
        if "results" in case:
            detail = "; ".join(f"{r['workflow']}: HTTP {r['http']}, node_errors "
                               f"{'{}' if r['node_errors'] == {} else json.dumps(r['node_errors'])[:300]}"
                               for r in case["results"])
        lines.append(f"{case['switch']:<44} {case['status']:<9} {detail}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
