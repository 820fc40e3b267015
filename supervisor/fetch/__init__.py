"""Fetch: the plan's files -> verified files on the volume.

Modules: resolve (huggingface_hub metadata, URL probes), net (the httpx client, HTTP failures sorted into retry
classes), transfer (parallel ranged downloads with retries), schedule and ranges (who fetches which bytes), store
(partial files, progress records, atomic placement), lock (one writer per file across processes and pods),
hashing, progress, report; the phases of one fetch: state (what they share), scan (what is on disk), lookup
(metadata), dryrun, download (disk check and downloads), engine (fetch_plan: the order of the phases); command
(`supervisor fetch`).

Public API: fetch_plan, FetchReport, FetchError, command.
"""

from __future__ import annotations

from .command import command
from .engine import fetch_plan
from .errors import FetchError
from .report import FetchReport, PlannedFile

__all__ = ["FetchError", "FetchReport", "PlannedFile", "command", "fetch_plan"]
