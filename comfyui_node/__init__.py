"""comfyui-pod-status: the pod supervisor's state inside ComfyUI's own page.

Installed by the image into ComfyUI's custom_nodes (folder `comfyui-pod-status`). It adds no node to the graph;
it registers one route on ComfyUI's server, `GET /pod-supervisor/status` (also under /api), which reads the
supervisor's status from its loopback endpoint (STATUS_ADDR, or SUPERVISOR_STATUS_URL) and returns what the
frontend extension in web/ shows: "models still downloading: 12.3 of 30.4 GB, about 4 min" while the fetch
runs, and the plan, restarts and out-of-memory counts in a "Pod" sidebar panel. Only the trimmed status crosses
over (no log lines, no command lines); it holds no secret.
"""

from __future__ import annotations

import asyncio

from .pod_status import read_status, status_url

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"

try:  # inside ComfyUI
    from aiohttp import web
    from server import PromptServer
except ImportError:  # imported elsewhere (tests): nothing to register
    PromptServer = None

if PromptServer is not None and getattr(PromptServer, "instance", None) is not None:
    _URL = status_url()

    @PromptServer.instance.routes.get("/pod-supervisor/status")
    async def pod_supervisor_status(request):  # noqa: ARG001 (aiohttp's handler signature)
        data = await asyncio.get_running_loop().run_in_executor(None, read_status, _URL)
        return web.json_response(data, headers={"Cache-Control": "no-store"})

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
