"""The ComfyUI custom node (comfyui_node/, installed into ComfyUI's custom_nodes as comfyui-pod-status): where it
finds the supervisor, and what it passes on to ComfyUI's page. Its frontend extension is checked against a real
ComfyUI in headless Chromium by bench/operator_view.py (screenshots in docs/)."""

from __future__ import annotations

import socket

from comfyui_node import WEB_DIRECTORY, pod_status
from supervisor.run.status import Status, start_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_supervisor_is_found_on_loopback():
    assert pod_status.status_url({}) == "http://127.0.0.1:8189/status"
    assert pod_status.status_url({"STATUS_ADDR": "0.0.0.0:9000"}) == "http://127.0.0.1:9000/status"
    assert pod_status.status_url({"STATUS_ADDR": "[::]:9000"}) == "http://[::1]:9000/status"
    assert pod_status.status_url({"SUPERVISOR_STATUS_URL": "http://127.0.0.1:7/"}) == "http://127.0.0.1:7/status"


def test_the_node_passes_on_the_download_and_the_plan_only():
    status = Status()
    status.set(phase="fetching", ready=False, not_ready=["downloading the plan's files"],
               plan={"gpu": "NVIDIA H100 80GB HBM3", "vram_class": "80 GB", "comfyui_args": ["--highvram"],
                     "models": [{"feature": "steadydancer", "variant": "bf16", "offload": "full", "blocks_to_swap": 0,
                                 "reason": "fits", "ladder": ["fp8/full/0"]}]},
               oom={"in_prompt": 1, "by_rung": {"bf16/full/0": 1}},
               comfyui={"argv": ["python", "main.py", "--secret-looking-flag"], "pid": 42})
    status.merge("fetch", state="running")
    status.fetch_progress({"files": [{"dest": "diffusion_models/a.safetensors", "state": "downloading", "size": 10,
                                      "bytes": 4, "percent": 40.0, "bytes_per_s": 2, "eta_s": 3.0, "extra": "x"}],
                           "total": {"size": 30_400_000_000, "bytes": 12_300_000_000, "eta_s": 240.0}})
    port = free_port()
    server = start_server(("127.0.0.1", port), status)
    try:
        seen = pod_status.read_status(f"http://127.0.0.1:{port}/status")
    finally:
        server.server_close()
    assert seen["available"] is True and seen["phase"] == "fetching" and seen["fetch"]["state"] == "running"
    assert seen["fetch"]["total"]["bytes"] == 12_300_000_000
    assert seen["fetch"]["files"] == [{"dest": "diffusion_models/a.safetensors", "state": "downloading", "size": 10,
                                       "bytes": 4, "percent": 40.0, "bytes_per_s": 2, "eta_s": 3.0}]
    assert seen["plan"]["models"][0]["variant"] == "bf16" and seen["oom"]["in_prompt"] == 1
    # Command lines, log lines and the like stay with the supervisor.
    assert "argv" not in str(seen) and "recent_warnings" not in seen and "comfyui" not in seen


def test_without_a_supervisor_the_page_shows_nothing():
    seen = pod_status.read_status(f"http://127.0.0.1:{free_port()}/status", timeout=1.0)
    assert seen["available"] is False and "error" in seen


def test_the_frontend_extension_is_shipped_with_the_node():
    from pathlib import Path

    web = Path(pod_status.__file__).parent / WEB_DIRECTORY
    script = (web / "pod_status.js").read_text()
    assert 'app.registerExtension' in script and '"/pod-supervisor/status"' in script
    assert "Models still downloading" in script and "innerHTML" not in script
