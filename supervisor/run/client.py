"""A thin client for the few routes of ComfyUI's HTTP API that the supervisor uses."""

from __future__ import annotations

from typing import Any, Mapping

import httpx


class ComfyError(Exception):
    """ComfyUI answered, but not with what was asked for."""


class ComfyClient:
    """The few routes the supervisor uses. One instance per thread; never reads proxy settings (loopback)."""

    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=timeout, trust_env=False, verify=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ComfyClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, timeout: float | None = None) -> Any:
        response = self._http.get(path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        if response.status_code != 200:
            raise ComfyError(f"GET {path}: HTTP {response.status_code}")
        return response.json()

    def system_stats(self, timeout: float | None = None) -> dict[str, Any]:
        return self._get("/system_stats", timeout)

    def object_info(self, timeout: float | None = None) -> dict[str, Any]:
        return self._get("/object_info", timeout)

    def queue(self, timeout: float | None = None) -> dict[str, Any]:
        return self._get("/queue", timeout)

    def queue_remaining(self, timeout: float | None = None) -> int:
        """Running + pending prompts (GET /prompt: tiny, unlike /queue which carries every prompt)."""
        return int(self._get("/prompt", timeout).get("exec_info", {}).get("queue_remaining", 0))

    def running_ids(self, timeout: float | None = None) -> list[str]:
        return [item[1] for item in self.queue(timeout).get("queue_running", []) if len(item) > 1]

    def post_prompt(self, prompt: Mapping[str, Any], client_id: str = "supervisor") -> str:
        response = self._http.post("/prompt", json={"prompt": prompt, "client_id": client_id})
        try:
            body = response.json()
        except ValueError:
            raise ComfyError(f"POST /prompt: HTTP {response.status_code}: {response.text[:300]}") from None
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            detail = f"{error.get('message', '')} {error.get('details', '')}".strip()
            nodes = "; ".join(f"node {node}: " + ", ".join(e.get("message", "") for e in info.get("errors", []))
                              for node, info in (body.get("node_errors") or {}).items())
            raise ComfyError(f"POST /prompt rejected ({error.get('type', response.status_code)}): {detail}"
                             + (f"; {nodes}" if nodes else ""))
        return str(body["prompt_id"])

    def history(self, prompt_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._get(f"/history/{prompt_id}", timeout).get(prompt_id, {})

    def recent_history(self, max_items: int = 8, timeout: float | None = None) -> dict[str, Any]:
        """The last `max_items` finished prompts, {prompt_id: entry}."""
        return self._get(f"/history?max_items={max_items}", timeout)

    def interrupt(self) -> None:
        self._http.post("/interrupt", json={})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self._http.post("/free", json={"unload_models": unload_models, "free_memory": free_memory})


def out_of_memory(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """For a /history entry whose prompt failed with torch's out-of-memory error: the prompt id, the node and what
    torch said (the sizes); else None."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for kind, data in reversed(status.get("messages") or []):
        if kind == "execution_error" and str(data.get("exception_type", "")).endswith("OutOfMemoryError"):
            message = str(data.get("exception_message", "")).strip().splitlines()
            return {"prompt_id": data.get("prompt_id"), "node_id": data.get("node_id"),
                    "node_type": data.get("node_type"), "message": message[0] if message else "out of memory"}
    return None


def history_outcome(entry: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(True, "") when a prompt succeeded, (False, why) when it failed, (None, "") while it is not finished."""
    status = entry.get("status") or {}
    if not status:
        return None, ""
    if status.get("status_str") == "success" or (status.get("completed") and status.get("status_str") != "error"):
        return True, ""
    if status.get("status_str") == "error":
        for kind, data in reversed(status.get("messages") or []):
            if kind in ("execution_error", "execution_interrupted"):
                text = str(data.get("exception_message", kind)).strip().splitlines()
                return False, f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}): " + (
                    text[0] if text else kind)
        return False, "execution failed"
    return None, ""

