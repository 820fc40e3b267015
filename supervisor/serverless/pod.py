"""The pod as the worker sees it: the supervisor's status endpoint (STATUS_ADDR). `/readyz` says whether jobs may
run (ComfyUI answers, the plan's files are in place, the checks passed); `/status` says where ComfyUI listens.
The worker reads this state and never changes it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import httpx

from .jobs import JobError


def status_url(addr: tuple[str, int]) -> str:
    host, port = addr
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Pod:
    def __init__(self, url: str, fallback_comfy_url: str, poll: float = 0.5):
        self.url = url
        self.fallback = fallback_comfy_url
        self.poll = poll

    def _parse(self, response: httpx.Response) -> tuple[bool, list[str]]:
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code == 200, list(body.get("not_ready") or [])

    def _comfy_url(self, response: httpx.Response) -> str:
        try:
            return str((response.json().get("comfyui") or {}).get("url") or self.fallback)
        except ValueError:
            return self.fallback

    # -- at start (blocking: before the SDK takes any job) ----------------------------------------------------

    def wait_until_ready(self, on_wait: Callable[[list[str]], None], every: float = 30.0) -> str:
        """Block until the pod is ready; returns ComfyUI's URL. `on_wait` is told the reasons now and then."""
        told = 0.0
        with httpx.Client(timeout=5, trust_env=False) as http:
            while True:
                try:
                    ready, reasons = self._parse(http.get(f"{self.url}/readyz"))
                    if ready:
                        return self._comfy_url(http.get(f"{self.url}/status"))
                except httpx.HTTPError as exc:
                    reasons = [f"status endpoint {self.url} not answering ({type(exc).__name__})"]
                if time.monotonic() - told >= every:
                    told = time.monotonic()
                    on_wait(reasons)
                time.sleep(max(self.poll, 1.0))  # a fetch can take half an hour: no need to ask faster

    # -- per job ------------------------------------------------------------------------------------------------

    async def ready(self, timeout: float, on_wait: Callable[[list[str]], Awaitable[None]]) -> str:
        """ComfyUI's URL once the pod is ready; waits up to `timeout` s (a ComfyUI restart), then JobError."""
        deadline = time.monotonic() + timeout
        told: list[str] | None = None
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            while True:
                try:
                    ready, reasons = self._parse(await http.get(f"{self.url}/readyz"))
                    if ready:
                        return self._comfy_url(await http.get(f"{self.url}/status"))
                except httpx.HTTPError as exc:
                    reasons = [f"the supervisor's status endpoint is not answering ({type(exc).__name__})"]
                if time.monotonic() >= deadline:
                    raise JobError(f"the pod is not ready after {timeout:g} s (SERVERLESS_READY_TIMEOUT): "
                                   + "; ".join(reasons), {"not_ready": reasons})
                if reasons != told:
                    told = reasons
                    await on_wait(reasons)
                await asyncio.sleep(self.poll)


def describe(reasons: list[str]) -> dict[str, Any]:
    return {"stage": "waiting_for_pod", "not_ready": reasons}
