"""RunPod Serverless worker mode (SERVERLESS=true): a handler process beside ComfyUI, started and restarted by
`supervisor run` like the other side services, taking jobs only while the pod is ready.

    supervisor worker            # what `supervisor run` starts; the runpod SDK is imported only here

Modules: `jobs` (the job's input: parsing, validation, presets), `comfy` (upload, submit, follow, outputs, take
back a prompt), `pod` (the supervisor's status endpoint), `handler` (one job end to end), `worker` (the runpod
glue). Importing this package does not import the runpod SDK.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .jobs import Job, JobError, parse


def main(extra_args: Sequence[str], environ: Mapping[str, str]) -> int:
    from .worker import main as worker_main

    return worker_main(extra_args, environ)


__all__ = ["Job", "JobError", "main", "parse"]
