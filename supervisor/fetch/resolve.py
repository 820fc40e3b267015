"""Where a file's bytes are and what they must be: URL, size, sha256/etag, commit.

Hub files and snapshot listings use huggingface_hub (it knows the Hub's headers, error codes and tree pagination);
plain URLs (CivitAI) are probed with one ranged GET. huggingface_hub is imported lazily: a warm boot never pays for
it. It reads some settings at import time, so we pass our own values explicitly (`endpoint=`, `token=`) and turn
its telemetry off (2.4.0 otherwise asks the import-time endpoint for an "agent harness" list and caches it in HOME).
Tokens: `token or False`, never None, so huggingface_hub does not fall back to a token file in HOME.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urljoin

import httpx

from .errors import FetchFailure, Permanent, Transient
from .net import origin, status_failure, transport_failure

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
T = TypeVar("T")


@dataclass(frozen=True)
class Remote:
    """One resolved file. The token is never shown (repr=False) and goes only to `auth_origin`."""

    url: str
    size: int | None
    sha256: str = ""
    etag: str = ""
    commit: str = ""
    auth_origin: str = ""
    token: str = field(default="", repr=False)
    ranges: bool = True  # False once the server answered a Range request with the whole body

    def headers_for(self, url: str) -> dict[str, str]:
        if self.token and self.auth_origin and origin(url) == self.auth_origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def identity(self) -> dict[str, Any]:
        """What a partial file must have been started for, to be resumed."""
        return {"size": self.size, "sha256": self.sha256, "etag": self.etag}


@dataclass(frozen=True)
class TreeFile:
    path: str
    size: int
    sha256: str  # "" for files not stored in LFS
    etag: str  # git blob id


def hub_lib() -> Any:
    """Import huggingface_hub, with the process-wide knobs we rely on."""
    import huggingface_hub
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True
    return huggingface_hub


def call_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run `fn` in a helper thread and give up after `seconds`: some huggingface_hub calls (the tree listing) pass
    no timeout to their HTTP client and could otherwise wait forever on a silent server."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"fetch-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise Transient(f"{what}: no answer within {seconds:g} s", "stall")
    if "error" in box:
        raise box["error"]
    return box["value"]


def hub_failure(exc: BaseException, *, repo: str, path: str, revision: str, endpoint: str, has_token: bool,
                features: Iterable[str]) -> FetchFailure:
    """huggingface_hub's exception -> ours, with a message that says what to do."""
    import httpx2
    from huggingface_hub import errors

    asked = ", ".join(features) or "the catalogue"
    where = f"{repo}/{path}" if path else repo
    if isinstance(exc, FetchFailure):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        fix = (f"accept the licence at {endpoint}/{repo} with the account of HF_TOKEN" if has_token else
               f"accept the licence at {endpoint}/{repo}, then set HF_TOKEN to a token of that account")
        return Permanent(f"{repo} is gated: {'HF_TOKEN has no access to it' if has_token else 'no HF_TOKEN is set'}"
                         f" (needed by {asked})", "gated", access=True, fix=fix)
    if isinstance(exc, errors.RevisionNotFoundError):
        return Permanent(f"revision {revision!r} not found in {repo} (needed by {asked})", "missing_revision",
                         access=True, fix="fix the revision in the catalogue")
    if isinstance(exc, errors.RemoteEntryNotFoundError) or isinstance(exc, errors.EntryNotFoundError):
        return Permanent(f"{path!r} not found in {repo}@{revision} (needed by {asked})", "missing_file",
                         access=True, fix="fix the path in the catalogue, or disable the feature")
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = "" if has_token else " (or it is private or gated: set HF_TOKEN)"
        return Permanent(f"repository {repo} not found{hint} (needed by {asked})", "missing_repo", access=True,
                         fix="fix the repo in the catalogue, or disable the feature")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return Permanent("huggingface_hub is in offline mode (HF_HUB_OFFLINE)", "offline")
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return Permanent(f"{where}: HF_TOKEN was refused (401 invalid credentials)" if has_token else
                             f"{where}: HTTP 401 (authentication required: set HF_TOKEN)", "unauthorized",
                             access=True, fix="set HF_TOKEN to a valid token")
        failure = status_failure(_as_httpx(exc.response), f"resolve {where}", auth_origin=True, what=where)
        return failure
    if isinstance(exc, httpx2.TimeoutException):
        return Transient(f"resolve {where}: {type(exc).__name__}", "stall" if "Read" in type(exc).__name__
                         else "connect_timeout")
    if isinstance(exc, httpx2.RemoteProtocolError):
        return Transient(f"resolve {where}: {type(exc).__name__}: {exc}", "closed")
    if isinstance(exc, httpx2.ConnectError):
        return Transient(f"resolve {where}: {type(exc).__name__}: {exc}", "connect")
    if isinstance(exc, httpx2.TransportError):
        return Transient(f"resolve {where}: {type(exc).__name__}: {exc}", "network")
    if isinstance(exc, httpx.TransportError):
        return transport_failure(exc, f"resolve {where}")
    return Permanent(f"resolve {where}: {type(exc).__name__}: {exc}", "error")


def _as_httpx(response: Any) -> httpx.Response:
    """An httpx2 response's status and headers, as an httpx response for `status_failure`."""
    return httpx.Response(response.status_code, headers=list(response.headers.items()))


def resolve_hub_file(*, endpoint: str, repo: str, path: str, revision: str, token: str, timeout: float,
                     features: Iterable[str] = ()) -> Remote:
    """One HEAD through huggingface_hub: the download URL (CDN for LFS files), size, sha256 and commit."""
    hf = hub_lib()
    url = hf.hf_hub_url(repo, path, revision=revision, endpoint=endpoint)
    try:
        meta = hf.get_hf_file_metadata(url, token=token or False, timeout=timeout, endpoint=endpoint)
    except Exception as exc:
        raise hub_failure(exc, repo=repo, path=path, revision=revision, endpoint=endpoint, has_token=bool(token),
                          features=features) from None
    if not meta.commit_hash:
        raise Permanent(f"{endpoint} did not answer like a Hugging Face Hub (no X-Repo-Commit for {repo}/{path})",
                        "not_a_hub", fix="check HF_ENDPOINT")
    etag = (meta.etag or "").lower()
    return Remote(url=urljoin(url, meta.location), size=meta.size, sha256=etag if SHA256_RE.match(etag) else "",
                  etag=etag, commit=meta.commit_hash, auth_origin=origin(endpoint), token=token)


def list_snapshot(*, endpoint: str, repo: str, revision: str, allow: tuple[str, ...], token: str, timeout: float,
                  features: Iterable[str] = ()) -> tuple[str, list[TreeFile]]:
    """(commit, files) of a repository at `revision`, kept by the `allow` globs (empty = all)."""
    hf = hub_lib()
    api = hf.HfApi(endpoint=endpoint, token=token or False)
    try:
        commit = revision
        if not COMMIT_RE.match(revision):
            info = call_with_deadline(lambda: api.repo_info(repo, revision=revision, timeout=timeout),
                                      timeout * 2, f"revision of {repo}")
            commit = info.sha
        entries = call_with_deadline(lambda: list(api.list_repo_tree(repo, recursive=True, revision=commit)),
                                     timeout * 4, f"file list of {repo}")
    except Exception as exc:
        raise hub_failure(exc, repo=repo, path="", revision=revision, endpoint=endpoint, has_token=bool(token),
                          features=features) from None
    files = []
    for entry in entries:
        if getattr(entry, "size", None) is None or not allowed(entry.path, allow):
            continue  # folders have no size
        lfs = getattr(entry, "lfs", None)
        files.append(TreeFile(path=entry.path, size=int(entry.size), sha256=(lfs.sha256 if lfs else "") or "",
                              etag=entry.blob_id or ""))
    if not files:
        raise Permanent(f"{repo}@{revision}: no file matches allow={list(allow)} (needed by "
                        f"{', '.join(features) or 'the catalogue'})", "empty_snapshot",
                        fix="fix the allow patterns in the catalogue")
    return commit, files


def allowed(path: str, patterns: tuple[str, ...]) -> bool:
    """huggingface_hub's allow_patterns rule: fnmatch, and a pattern ending in '/' means everything below it."""
    if not patterns:
        return True
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


def resolve_url(client: httpx.Client, url: str, token: str) -> Remote:
    """A plain HTTPS file (CivitAI): one GET of its first byte, following redirects by hand so the token stays with
    the first origin. The answer tells the final URL, the size and whether ranges work."""
    auth = origin(url)
    current = url
    for _ in range(10):
        headers = {"Range": "bytes=0-0"}
        if token and origin(current) == auth:
            headers["Authorization"] = f"Bearer {token}"
        try:
            with client.stream("GET", current, headers=headers) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code == 206:
                    total = response.headers.get("content-range", "").rpartition("/")[2]
                    size = int(total) if total.isdigit() else None
                    ranges = size is not None
                elif response.status_code == 200:
                    length = response.headers.get("content-length")
                    encoded = response.headers.get("content-encoding", "identity") != "identity"
                    size = int(length) if length and length.isdigit() and not encoded else None
                    ranges = False
                else:
                    failure = status_failure(response, f"resolve {url}", auth_origin=origin(current) == auth,
                                             what=url)
                    if isinstance(failure, Permanent) and failure.access and origin(current) == auth:
                        failure = Permanent(f"{url}: HTTP {response.status_code}"
                                            f"{' (access refused)' if response.status_code in (401, 403) else ''}",
                                            failure.cause, access=True,
                                            fix="set the token this file needs (CIVITAI_API_KEY for CivitAI)"
                                            if response.status_code in (401, 403) else "check the URL")
                    raise failure
                etag = response.headers.get("etag", "").strip('"').removeprefix("W/").strip('"')
                return Remote(url=current, size=size, etag=etag, auth_origin=auth, token=token, ranges=ranges)
        except httpx.TransportError as exc:
            raise transport_failure(exc, f"resolve {url}") from None
    raise Permanent(f"{url}: more than 10 redirects", "redirects")
