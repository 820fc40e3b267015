"""The operator's view against a real ComfyUI: `supervisor run` launches a real ComfyUI (CPU) that has this
project's `comfyui_node` in custom_nodes, while the plan's files download from the stand-in Hub over a slow link;
headless Chromium (playwright-core + Debian's chromium) takes screenshots of the supervisor's status page and of
ComfyUI's own page (the download banner and the "Pod" panel), during the download and after; a prompt's output
goes to a moto S3 server through ENABLE_R2_SYNC.

    python bench/operator_view.py --comfyui-dir /tmp/ComfyUI --python /tmp/venv/bin/python \
        --playwright /tmp/pw/node_modules --out docs

COMFYUI_DIR must be a writable ComfyUI checkout (the node is linked into its custom_nodes) whose Python has
ComfyUI's requirements (comfyui-frontend-package included). The plan is made for an RTX 4090 (its SteadyDancer
files are put in place as sparse files with verified markers) while ComfyUI itself runs with --cpu; three demo
files (stand-in content) are what downloads. Prints and writes a JSON summary next to the screenshots.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.run.conftest import Pod, present_plan_files  # noqa: E402
from tests.standins.hub import Hub, TokenBucket  # noqa: E402
from tests.standins.s3 import KEY_ID, REGION, SECRET as S3_SECRET, S3Server  # noqa: E402

MB = 1_000_000
# The pod the plan is made for (simulated: ComfyUI itself runs on the CPU); a fixed disk keeps the plan stable.
HARDWARE = ["--gpu", "RTX 4090", "--ram", "64GiB", "--disk", "200GiB"]
SECRET = "hf_OperatorViewBench0123456789abcdefXYZ"
DEMO_FILES = {"loras/demo_style_lora.safetensors": 48 * MB, "upscale_models/demo_upscaler.safetensors": 64 * MB,
              "text_encoders/demo_text_encoder.safetensors": 96 * MB}
PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/operator"}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    import httpx

    try:
        return httpx.get(url, timeout=5, trust_env=False).json()
    except Exception:
        return {}


def wait(what, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout} s waiting for {what.__doc__ or what}")


def screens(args: argparse.Namespace, *argv: str) -> dict:
    env = {**os.environ, "NODE_PATH": str(args.playwright)}
    done = subprocess.run(["node", str(REPO / "bench" / "screens.mjs"), *argv], capture_output=True, text=True,
                          env=env, timeout=180)
    if done.returncode != 0:
        raise SystemExit(f"screens.mjs {argv[0]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--python", required=True, help="the Python that runs ComfyUI")
    parser.add_argument("--playwright", type=Path, required=True, help="node_modules holding playwright-core")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--link-mb", type=float, default=2.0, help="download rate of the stand-in Hub, MB/s")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    node_link = args.comfyui_dir / "custom_nodes" / "comfyui-pod-status"
    if node_link.is_symlink() or node_link.exists():
        node_link.unlink() if node_link.is_symlink() else shutil.rmtree(node_link)
    node_link.symlink_to(REPO / "comfyui_node")

    root = Path(tempfile.mkdtemp(prefix="operator-view-"))
    summary: dict = {"date": datetime.date.today().isoformat(), "comfyui_dir": str(args.comfyui_dir),
                     "link_mb_per_s": args.link_mb}
    proc = None
    s3 = S3Server.start()  # moto: the outputs go to a real S3-protocol server
    s3.create_bucket("pod-outputs")
    try:
        with Hub(root / "hub", lfs_threshold=100_000) as hub:
            rng = random.Random(3)
            entries = []
            for i, (dest, size) in enumerate(DEMO_FILES.items()):
                name = dest.rsplit("/", 1)[-1]
                hub.add_file("demo/files", name, rng.randbytes(size))
                entries.append(f'[files.demo{i}]\nrepo = "demo/files"\npath = "{name}"\ndest = "{dest}"\n'
                               f"size = {size}\n")
            catalog = root / "demo.toml"
            catalog.write_text("\n".join(entries) + '\n[features.demo]\nswitch = "ENABLE_DEMO"\n'
                               'description = "demo files"\nfiles = ["demo0", "demo1", "demo2"]\n')
            hub.link = TokenBucket(int(args.link_mb * MB))
            status_port, comfy_port = free_port(), free_port()
            env = {"PATH": os.environ["PATH"], "HOME": str(root), "LANG": "C.UTF-8", "LOG_FORMAT": "json",
                   "COMFYUI_DIR": str(args.comfyui_dir), "COMFYUI_PYTHON": args.python,
                   "COMFYUI_DATA_DIR": str(root / "data"), "MODELS_DIR": str(root / "models"),
                   "LOG_DIR": str(root / "logs"), "COMFYUI_PORT": str(comfy_port), "COMFYUI_LISTEN": "127.0.0.1",
                   "COMFYUI_ARGS": "--cpu", "STATUS_ADDR": f"127.0.0.1:{status_port}", "HF_ENDPOINT": hub.url,
                   "HF_TOKEN": SECRET, "SUPERVISOR_CATALOG": str(catalog), "ENABLE_DEMO": "true",
                   "DISK_RESERVE_GB": "0", "CHECK_WORKFLOWS": "false", "STARTUP_TIMEOUT": "300",
                   "DOWNLOAD_CONNECTIONS": "4", "ENABLE_R2_SYNC": "true", "R2_ENDPOINT": s3.url,
                   "R2_BUCKET": "pod-outputs", "R2_ACCESS_KEY_ID": KEY_ID, "R2_SECRET_ACCESS_KEY": S3_SECRET,
                   "R2_REGION": REGION, "RUNPOD_POD_ID": "bench-pod"}
            settings = root / "data" / "user" / "default" / "comfy.settings.json"
            settings.parent.mkdir(parents=True)
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))  # no first-visit templates dialog
            # SteadyDancer's files are "already on the volume"; only the demo files download.
            present_plan_files(Pod(root=root, env={**env, "ENABLE_DEMO": "false"}), *HARDWARE)
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", *HARDWARE],
                                    cwd=REPO, env=env, stdout=open(root / "supervisor.log", "w"),
                                    stderr=subprocess.STDOUT)
            status_url = f"http://127.0.0.1:{status_port}"
            comfy_url = f"http://127.0.0.1:{comfy_port}"

            def answering_while_fetching() -> bool:
                """ComfyUI answers while the download runs (at least 15 % done)"""
                s = get_json(f"{status_url}/status")
                total = ((s.get("fetch") or {}).get("progress") or {}).get("total") or {}
                return (s.get("comfyui") or {}).get("state") == "answering" and s.get("fetch", {}).get(
                    "state") == "running" and (total.get("percent") or 0) >= 15

            wait(answering_while_fetching, 300)
            summary["comfyui_answering_after_s"] = round(time.monotonic() - started, 1)
            summary["status_page_fetching"] = screens(args, "page", status_url + "/",
                                                      str(args.out / "status-page-fetching.png"))
            seen = screens(args, "comfyui", comfy_url + "/", str(args.out / "comfyui-fetching"), "--panel")
            summary["comfyui_fetching"] = seen
            banner_ok = re.match(r"Models still downloading: [\d.]+( MB)? of [\d.]+ (MB|GB), about \d+ (s|min)",
                                 seen.get("banner", ""))
            summary["banner_matches"] = bool(banner_ok)

            wait(lambda: get_json(f"{status_url}/readyz").get("ready"), 600)
            summary["ready_after_s"] = round(time.monotonic() - started, 1)
            import httpx

            httpx.post(f"{comfy_url}/prompt", json={"prompt": PROMPT}, timeout=10, trust_env=False).raise_for_status()
            wait(lambda: (get_json(f"{status_url}/status").get("outputs") or {}).get("uploaded"), 120)
            summary["bucket_keys"] = s3.keys("pod-outputs")
            summary["status_page_ready"] = screens(args, "page", status_url + "/",
                                                   str(args.out / "status-page-ready.png"))
            summary["comfyui_ready"] = screens(args, "comfyui", comfy_url + "/", str(args.out / "comfyui-ready"),
                                               "--no-banner", "--panel")
            texts = json.dumps(summary) + json.dumps(get_json(f"{status_url}/status"))
            texts += subprocess.run(["curl", "-s", f"{status_url}/metrics"], capture_output=True, text=True).stdout
            summary["secret_shown"] = SECRET in texts or S3_SECRET in texts
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                summary["supervisor_exit"] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        s3.stop()
        if node_link.is_symlink():
            node_link.unlink()
        if (root / "supervisor.log").exists():  # the supervisor's events, to look at after a failed run
            shutil.copy(root / "supervisor.log", Path(tempfile.gettempdir()) / "operator-view-supervisor.log")
        shutil.rmtree(root, ignore_errors=True)
    (args.out / "operator-view.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    ok = summary.get("banner_matches") and not summary.get("secret_shown") and \
        summary.get("comfyui_ready", {}).get("banner_visible") is False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
