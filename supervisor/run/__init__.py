"""The PID-1 daemon (`supervisor run`): `loop` is the arbiter that owns everything; `unit`/`units` one ComfyUI
process each (launch line in `launch`, HTTP API in `client`, why it exited in `exits`, when to restart in
`restart`); `fetchjob`, `sidecars` (side `services`), `shutdown`; `runtime` is what the loop lends its parts
(PID-1 mechanics in `init`, timers, inbox); `workers` are the background threads; `output` turns children's
output into events; `status` serves the state, `health` asks it; `prewarm` reads weights into the page cache.

Importing this package stays cheap (`supervisor health` runs as a frequent HEALTHCHECK): the loop and what it
needs load when `run` is called."""

from __future__ import annotations

from typing import Any, Mapping


def run(ctx: Any, args: Any = None, environ: Mapping[str, str] | None = None) -> int:
    """`supervisor run`: plan, fetch, launch and supervise ComfyUI until stopped; exits the process."""
    from .loop import run as run_loop

    return run_loop(ctx, args, environ)


__all__ = ["run"]
