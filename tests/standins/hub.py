"""A stand-in Hugging Face Hub on loopback: real HTTP, two origins, fault injection and a request log.

Serves `<root>/<owner>/<name>/<path in repo>` as repository `<owner>/<name>`:

- Hub origin: `HEAD|GET /{repo}/resolve/{rev}/{path}` (small files answered directly with a git-sha1 ETag; files of
  `lfs_threshold` bytes or more answered with a 302 to the CDN and `X-Linked-Etag` = sha256, `X-Linked-Size`),
  `GET /api/models/{repo}/revision/{rev}`, `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...`, and a
  CivitAI-like `GET /api/download/models/{id}` (file `civitai/models/{id}`) that redirects to the CDN.
- CDN origin (another port, so another origin): `GET /cdn/{repo}/{path}?t=<signature id>` with Range support.
- For a Hub run in another process: `GET /_standin/stats` (requests and body bytes so far, per origin) and
  `GET /_standin/reset` (clear the request log). These two are not logged.

Nothing it sends advertises Xet, so huggingface_hub talks plain HTTP to it. Every request lands in `Hub.log`
(origin, method, path, file key, Range, Authorization, status, body bytes sent, fault, start and end time).
Throttling: `rate` caps each TCP connection, `link_rate` caps all connections together (a shared token bucket),
which is how the benchmark models "the link". `url_ttl` makes CDN URLs expire after that many seconds.

Faults, armed per file (`hub.fault(kind, "owner/name/path", times=1, ...)`, fnmatch patterns allowed):
- on the bytes (CDN GET, or Hub GET of a small file): `reset` (RST after `after` bytes), `close` (clean FIN after
  `after` bytes), `stall` (silence for `seconds` after `after` bytes), `corrupt` (the byte at file offset `after`
  flipped, same size), `ignore_range` (200 with the whole file), `expired` (403 "Request has expired");
- on the metadata (HEAD /resolve, /api): `gated` (401 or `status=403`, X-Error-Code GatedRepo), `unauthorized`
  (401 invalid credentials), `missing_repo`, `missing_revision`, `missing_entry` (404 with the Hub's codes),
  `wrong_size` (X-Linked-Size / Content-Length off by `delta`);
- either (`on="data"` default, or `on="meta"`): `status` (any `status`, e.g. 500/502/503/504/408), `429`
  (with `Retry-After: retry_after`).
`hub.gate(repo, token)` makes a whole repo gated; `hub.civitai_token` makes the CivitAI route require a key.

Run alone (for the benchmark or an end-to-end script):
    python -m tests.standins.hub --root DIR [--port P] [--cdn-port Q] [--rate BYTES_PER_S] [--link-rate BYTES_PER_S]
It prints one JSON line `{"hub": URL, "cdn": URL}` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import signal
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK = 256 * 1024

# Where each fault strikes: "meta" = the Hub's HEAD/API answers, "data" = the request that carries the file's bytes
# (the CDN GET for large files, the Hub GET for small ones).
META_FAULTS = {"gated", "missing_repo", "missing_entry", "missing_revision", "wrong_size", "unauthorized"}
DATA_FAULTS = {"reset", "close", "stall", "corrupt", "ignore_range", "expired"}
STATUS_FAULTS = {"status", "429"}
FAULT_KINDS = META_FAULTS | DATA_FAULTS | STATUS_FAULTS


@dataclass
class Fault:
    """One injected fault. `times` = how many matching requests it hits (None = all)."""

    kind: str
    pattern: str  # "owner/name/path" or an fnmatch pattern of it
    times: int | None = 1
    after: int = 0  # reset/close/stall: body bytes sent first; corrupt: the file offset of the flipped byte
    status: int = 503
    retry_after: float | None = None
    seconds: float = 30.0  # stall length
    delta: int = 1  # wrong_size: added to the advertised size
    on: str = ""  # status/429: "data" (default) or "meta"
    hits: int = 0

    def where(self) -> str:
        if self.kind in META_FAULTS:
            return "meta"
        if self.kind in DATA_FAULTS:
            return "data"
        return self.on or "data"


@dataclass
class Request:
    origin: str  # "hub" or "cdn"
    method: str
    path: str  # URL path (unquoted), without the query
    key: str  # "owner/name/path" of the file concerned, "" if none
    range: str | None
    authorization: str | None
    status: int = 0
    sent: int = 0  # body bytes written
    fault: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0


@dataclass(frozen=True)
class FileMeta:
    size: int
    sha256: str
    git_sha1: str


class TokenBucket:
    """Bytes per second, shared by whoever calls `take`; reservations may go negative, callers sleep it off."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.burst = burst if burst is not None else min(max(self.rate / 50, 4096), CHUNK)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int, stop: threading.Event) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            stop.wait(wait)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: "Hub", origin: str):
        self.hub = hub
        self.origin = origin
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-body (our own faults, killed downloads) are normal here


class _Abort(Exception):
    """End this connection now (after a reset, close or stall)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def setup(self) -> None:
        super().setup()
        rate = self.server.hub.rate
        self.bucket = TokenBucket(rate) if rate else None  # per TCP connection

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        if path.startswith("/_standin/"):
            return hub._serve_control(self, path)
        record = Request(origin=self.server.origin, method=method, path=path, key="",
                         range=self.headers.get("Range"), authorization=self.headers.get("Authorization"))
        hub._record(record)
        try:
            if self.server.origin == "cdn":
                hub._serve_cdn(self, record, path, query)
            else:
                hub._serve_hub(self, record, path, query)
        except (_Abort, ConnectionError, BrokenPipeError, socket.timeout, OSError):
            self.close_connection = True
        finally:
            record.ended = time.monotonic()

    # -- small response helpers ---------------------------------------------------------------------------------

    def reply(self, record: Request, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        record.status = status
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            record.sent += len(body)

    def error(self, record: Request, status: int, code: str = "", message: str = "",
              extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        if message:
            headers["X-Error-Message"] = message
        self.reply(record, status, headers, json.dumps({"error": message or code or str(status)}).encode())


class Hub:
    """The two servers plus the state tests poke at. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, root: Path | str, *, port: int = 0, cdn_port: int = 0, rate: float = 0, link_rate: float = 0,
                 lfs_threshold: int = 100_000, url_ttl: float = 0, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.rate = rate
        self.link = TokenBucket(link_rate) if link_rate else None
        self.lfs_threshold = lfs_threshold
        self.url_ttl = url_ttl  # > 0: CDN URLs older than this many seconds answer 403 (an expired signature)
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self.gates: dict[str, str] = {}  # repo -> the token that has access
        self.civitai_token: str = ""
        self.commits: dict[str, str] = {}
        self._lock = threading.Lock()
        self._meta: dict[tuple[str, int, int], FileMeta] = {}
        self._signatures: dict[str, float] = {}
        self._held = 0
        self._stop = threading.Event()
        self._flowing = threading.Event()  # cleared by pause(): file bytes wait until resume()
        self._flowing.set()
        self._hub = _Server((host, port), self, "hub")
        self._cdn = _Server((host, cdn_port), self, "cdn")
        self.url = f"http://{host}:{self._hub.server_address[1]}"
        self.cdn_url = f"http://{host}:{self._cdn.server_address[1]}"
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> "Hub":
        for server in (self._hub, self._cdn):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the test-facing API ------------------------------------------------------------------------------------

    def pause(self) -> None:
        """Hold every request for a file's bytes (before its answer starts) until `resume()`: lets a test act at a
        known point of a download, with no timing involved."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def waiting(self) -> int:
        """How many requests for file bytes `pause()` is holding now."""
        with self._lock:
            return self._held

    def add_file(self, repo: str, path: str, data: bytes | None = None, *, size: int | None = None) -> Path:
        """Create `<root>/<repo>/<path>` with `data`, or a sparse file of `size` bytes (zeros)."""
        target = self.root / repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            target.write_bytes(data)
        else:
            with open(target, "wb") as handle:
                handle.truncate(size or 0)
        return target

    def fault(self, kind: str, pattern: str, **options: Any) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_KINDS)}")
        fault = Fault(kind=kind, pattern=pattern, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def gate(self, repo: str, token: str) -> None:
        """Make `repo` gated: only `Authorization: Bearer <token>` may read it."""
        self.gates[repo] = token

    def meta(self, key: str) -> FileMeta:
        """Size, sha256 and git blob sha1 of `owner/name/path` (cached by size and mtime)."""
        target = self.root / key
        stat = target.stat()
        cache_key = (key, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._meta.get(cache_key)
        if known:
            return known
        sha256 = hashlib.sha256()
        git = hashlib.sha1(f"blob {stat.st_size}\0".encode())
        small = stat.st_size < self.lfs_threshold
        with open(target, "rb") as handle:
            while block := handle.read(4 << 20):
                sha256.update(block)
                if small:
                    git.update(block)
        meta = FileMeta(stat.st_size, sha256.hexdigest(), git.hexdigest())
        with self._lock:
            self._meta[cache_key] = meta
        return meta

    def commit(self, repo: str) -> str:
        return self.commits.get(repo) or hashlib.sha1(f"commit:{repo}".encode()).hexdigest()

    def requests(self, origin: str | None = None, key: str | None = None, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.log if (origin is None or r.origin == origin) and (key is None or r.key == key)
                    and (method is None or r.method == method)]

    def bytes_sent(self, key: str | None = None) -> int:
        return sum(r.sent for r in self.requests(key=key) if r.method == "GET" and not r.path.startswith("/api/models"))

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- internals ----------------------------------------------------------------------------------------------

    def _record(self, record: Request) -> None:
        with self._lock:
            self.log.append(record)

    def _take_fault(self, key: str, where: str, method: str, span: tuple[int, int] | None = None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.where() != where or not fnmatch.fnmatchcase(key, fault.pattern):
                    continue
                if fault.kind == "corrupt" and span is not None and not span[0] <= fault.after <= span[1]:
                    continue  # a corruption counts only when it hits a byte that is sent
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if where == "data" and method != "GET":
                    continue
                fault.hits += 1
                return fault
        return None

    def _split_repo(self, parts: list[str]) -> tuple[str, list[str]]:
        return "/".join(parts[:2]), parts[2:]

    def _gate_check(self, h: _Handler, record: Request, repo: str) -> bool:
        """True if the request may go on; otherwise the gated answer was sent."""
        needed = self.gates.get(repo)
        if not needed:
            return True
        given = (record.authorization or "").removeprefix("Bearer ").strip()
        if given == needed:
            return True
        status = 401 if not given else 403
        h.error(record, status, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                                             "and be authenticated to access it. Please log in.")
        return False

    def _repo_exists(self, repo: str) -> bool:
        return repo.count("/") == 1 and (self.root / repo).is_dir()

    def _meta_fault(self, h: _Handler, record: Request, key: str, repo: str, commit: str) -> Fault | None:
        """Answer a meta-level fault armed for `key` (then `record.status` is set). A `wrong_size` fault is not an
        answer but a change to the headers: it is returned for the caller to apply."""
        fault = self._take_fault(key, "meta", record.method)
        if fault is None:
            return None
        record.fault = fault.kind
        if fault.kind == "wrong_size":
            return fault
        if fault.kind == "gated":
            h.error(record, fault.status if fault.status in (401, 403) else 401, "GatedRepo",
                    f"Access to model {repo} is restricted.")
        elif fault.kind == "unauthorized":
            h.error(record, 401, "", "Invalid credentials in Authorization header")
        elif fault.kind == "missing_repo":
            h.error(record, 404, "RepoNotFound", "Repository not found")
        elif fault.kind == "missing_revision":
            h.error(record, 404, "RevisionNotFound", "Invalid rev id")
        elif fault.kind == "missing_entry":
            h.error(record, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        else:
            self._status_fault(h, record, fault)
        return None

    def _status_fault(self, h: _Handler, record: Request, fault: Fault) -> None:
        status = 429 if fault.kind == "429" else fault.status
        extra = {}
        if fault.retry_after is not None:
            extra["Retry-After"] = f"{fault.retry_after:g}"
        h.error(record, status, "", f"injected {status}", extra)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            log = list(self.log)
        by_origin = {o: {"requests": sum(r.origin == o for r in log),
                         "bytes_sent": sum(r.sent for r in log if r.origin == o)} for o in ("hub", "cdn")}
        return {"requests": len(log), "bytes_sent": sum(r.sent for r in log), "by_origin": by_origin,
                "ranged_requests": sum(1 for r in log if r.range)}

    def _serve_control(self, h: _Handler, path: str) -> None:
        record = Request(origin=h.server.origin, method=h.command, path=path, key="", range=None, authorization=None)
        if path == "/_standin/reset":
            self.reset_log()
            h.reply(record, 200, {"Content-Type": "application/json"}, b"{}")
        elif path == "/_standin/stats":
            h.reply(record, 200, {"Content-Type": "application/json"}, json.dumps(self.stats()).encode())
        else:
            h.error(record, 404, "", "no such control route")

    # Hub origin ---------------------------------------------------------------------------------------------------

    def _serve_hub(self, h: _Handler, record: Request, path: str, query: dict[str, list[str]]) -> None:
        parts = [p for p in path.split("/") if p]
        if parts[:4] == ["api", "download", "models", parts[3] if len(parts) > 3 else ""] and len(parts) == 4:
            return self._serve_civitai(h, record, parts[3])
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._serve_api(h, record, parts[2:], query)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            rev = parts[3]
            rel = "/".join(parts[4:])
            return self._serve_resolve(h, record, repo, rev, rel)
        h.error(record, 404, "", "no such route")

    def _check_repo_rev(self, h: _Handler, record: Request, repo: str, rev: str) -> bool:
        if not self._repo_exists(repo):
            h.error(record, 404 if repo not in self.gates else 401, "RepoNotFound", "Repository not found")
            return False
        if not self._gate_check(h, record, repo):
            return False
        if rev not in ("main", self.commit(repo)):
            h.error(record, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return False
        return True

    def _serve_resolve(self, h: _Handler, record: Request, repo: str, rev: str, rel: str) -> None:
        key = f"{repo}/{rel}"
        record.key = key
        commit = self.commit(repo)
        wrong_size = self._meta_fault(h, record, key, repo, commit) if self._repo_exists(repo) else None
        if record.status:
            return
        if not self._check_repo_rev(h, record, repo, rev):
            return
        target = self.root / key
        if not target.is_file():
            h.error(record, 404, "EntryNotFound", f"{rel} does not exist", {"X-Repo-Commit": commit})
            return
        meta = self.meta(key)
        advertised = meta.size + (wrong_size.delta if wrong_size else 0)
        if meta.size >= self.lfs_threshold:
            headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{meta.sha256}"', "X-Linked-Size": str(advertised),
                       "ETag": f'"{meta.git_sha1}"', "Location": self._sign(key)}
            h.reply(record, 302, headers)
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{meta.git_sha1}"', "Accept-Ranges": "bytes"}
        if record.method == "HEAD":
            headers["Content-Length"] = str(advertised)
            h.reply(record, 200, headers)
            return
        self._send_file(h, record, key, meta, headers)

    def _serve_api(self, h: _Handler, record: Request, parts: list[str], query: dict[str, list[str]]) -> None:
        repo, rest = self._split_repo(parts)
        what, rev, sub = rest[0], urllib.parse.unquote(rest[1]), "/".join(rest[2:])
        record.key = repo
        if self._repo_exists(repo):
            self._meta_fault(h, record, f"{repo}/", repo, self.commit(repo))
            if record.status:
                return
        if not self._check_repo_rev(h, record, repo, rev):
            return
        base = self.root / repo
        files = sorted(p for p in base.rglob("*") if p.is_file())
        if what == "revision":
            body = {"id": repo, "modelId": repo, "sha": self.commit(repo), "private": False,
                    "siblings": [{"rfilename": p.relative_to(base).as_posix()} for p in files]}
            h.reply(record, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())
            return
        if what != "tree":
            h.error(record, 404, "", "no such route")
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        start = base / sub if sub else base
        if not start.is_dir():
            h.error(record, 404, "EntryNotFound", f"{sub} does not exist", {"X-Repo-Commit": self.commit(repo)})
            return
        entries = []
        for p in sorted(start.rglob("*") if recursive else start.iterdir()):
            rel = p.relative_to(base).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel})
                continue
            meta = self.meta(f"{repo}/{rel}")
            entry: dict[str, Any] = {"type": "file", "oid": meta.git_sha1, "size": meta.size, "path": rel}
            if meta.size >= self.lfs_threshold:
                entry["lfs"] = {"oid": meta.sha256, "size": meta.size, "pointerSize": 134}
            entries.append(entry)
        h.reply(record, 200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    def _serve_civitai(self, h: _Handler, record: Request, version: str) -> None:
        key = f"civitai/models/{version}"
        record.key = key
        if self.civitai_token:
            given = (record.authorization or "").removeprefix("Bearer ").strip()
            if given != self.civitai_token:
                h.error(record, 401, "", "The creator of this asset requires you to be logged in to download it")
                return
        if not (self.root / key).is_file():
            h.error(record, 404, "", "Model not found")
            return
        fault = self._take_fault(key, "meta", record.method)
        if fault and fault.kind in ("status", "429"):
            record.fault = fault.kind
            self._status_fault(h, record, fault)
            return
        h.reply(record, 307, {"Location": self._sign(key)})

    # CDN origin ---------------------------------------------------------------------------------------------------

    def _sign(self, key: str) -> str:
        with self._lock:
            signature = f"{len(self._signatures) + 1}"
            self._signatures[signature] = time.monotonic()
        return f"{self.cdn_url}/cdn/{urllib.parse.quote(key)}?t={signature}"

    def _serve_cdn(self, h: _Handler, record: Request, path: str, query: dict[str, list[str]]) -> None:
        if not path.startswith("/cdn/"):
            h.error(record, 404, "", "no such route")
            return
        key = path[len("/cdn/"):]
        record.key = key
        signature = query.get("t", [""])[0]
        with self._lock:
            issued = self._signatures.get(signature)
        if issued is None or (self.url_ttl and time.monotonic() - issued > self.url_ttl):
            record.fault = record.fault or "expired_ttl"
            h.reply(record, 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code>"
                    b"<Message>Request has expired</Message></Error>")
            return
        if not (self.root / key).is_file():
            h.error(record, 404, "", "NoSuchKey")
            return
        meta = self.meta(key)
        headers = {"ETag": f'"{meta.sha256}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "Content-Disposition": f'attachment; filename="{Path(key).name}"'}
        self._send_file(h, record, key, meta, headers)

    def _send_file(self, h: _Handler, record: Request, key: str, meta: FileMeta, headers: dict[str, str]) -> None:
        if record.method == "GET" and not self._flowing.is_set():
            with self._lock:
                self._held += 1
            try:
                while not self._flowing.wait(0.05):
                    if self._stop.is_set():
                        raise _Abort()
            finally:
                with self._lock:
                    self._held -= 1
        asked = _parse_range(record.range, meta.size) if record.range else (0, meta.size - 1)
        fault = self._take_fault(key, "data", record.method, asked)
        if fault:
            record.fault = fault.kind
            if fault.kind in ("status", "429"):
                self._status_fault(h, record, fault)
                return
            if fault.kind == "expired":
                h.reply(record, 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code>"
                        b"<Message>Request has expired</Message></Error>")
                return
        start, end = 0, meta.size - 1
        status = 200
        if record.range and not (fault and fault.kind == "ignore_range"):
            if asked is None:
                h.reply(record, 416, {"Content-Range": f"bytes */{meta.size}"})
                return
            start, end = asked
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
        length = end - start + 1
        record.status = status
        h.send_response(status)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            h.send_header(name, value)
        h.end_headers()
        self._stream(h, record, key, start, length, fault)

    def _stream(self, h: _Handler, record: Request, key: str, start: int, length: int, fault: Fault | None) -> None:
        limit = length
        if fault and fault.kind in ("reset", "close", "stall"):
            limit = min(length, fault.after)
        with open(self.root / key, "rb") as handle:
            fd = handle.fileno()
            offset = start
            chunk = CHUNK
            for bucket in (h.bucket, self.link):
                if bucket:
                    chunk = min(chunk, int(bucket.burst))  # small sends when throttled: a smooth rate
            while record.sent < limit:
                n = min(chunk, limit - record.sent)
                if h.bucket:
                    h.bucket.take(n, self._stop)
                if self.link:
                    self.link.take(n, self._stop)
                if self._stop.is_set():
                    raise _Abort()
                block = os.pread(fd, n, offset)
                if not block:
                    break
                if fault and fault.kind == "corrupt" and offset <= fault.after < offset + len(block):
                    i = fault.after - offset
                    block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1:]
                h.wfile.write(block)
                record.sent += len(block)
                offset += len(block)
        if fault is None or fault.kind not in ("reset", "close", "stall") or record.sent >= length:
            return
        if fault.kind == "stall":
            self._stop.wait(fault.seconds)
        elif fault.kind == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, as a dropped proxy connection does.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        if fault.kind == "reset":
            h.connection.close()
        raise _Abort()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <owner>/<name>/<path> files")
    parser.add_argument("--port", type=int, default=0, help="Hub port (default: any free one)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: any free one)")
    parser.add_argument("--rate", type=float, default=0, help="bytes/s per connection (0 = unlimited)")
    parser.add_argument("--link-rate", type=float, default=0, help="bytes/s over all connections (0 = unlimited)")
    parser.add_argument("--lfs-threshold", type=int, default=100_000, help="files this large go through the CDN")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    hub = Hub(args.root, port=args.port, cdn_port=args.cdn_port, rate=args.rate, link_rate=args.link_rate,
              lfs_threshold=args.lfs_threshold, host=args.host)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with hub:
        print(json.dumps({"hub": hub.url, "cdn": hub.cdn_url}), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
