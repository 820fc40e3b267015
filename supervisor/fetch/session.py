"""What the transfers of one fetch share (the HTTP client, the halt event, the sockets being read) and what the
connections of one file share (its retry budget, its current download URL)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Callable

import httpx

from ._log import log
from .errors import FetchFailure
from .net import origin
from .progress import Progress
from .resolve import Remote
from .tuning import Tuning


class VersionChanged(FetchFailure):
    """Resolving again found another version of the file: start over."""


class Sockets:
    """Sockets of responses being read, so `halt` can wake blocked reads (shutdown wakes recv; close does not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, response: httpx.Response) -> socket.socket | None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with self._lock:
                self._open.add(sock)
        return sock

    def remove(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._open.discard(sock)

    def shutdown_all(self) -> None:
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Budget:
    """A file's retries without progress, shared by its connections."""

    def __init__(self, retries: int):
        self.left = retries
        self._lock = threading.Lock()

    def spend(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


class Source:
    """The file's current Remote; resolved again (once, however many connections ask) when a URL expires."""

    def __init__(self, remote: Remote, resolve: Callable[[], Remote]):
        self.remote = remote
        self.generation = 0
        self._resolve = resolve
        self._lock = threading.Lock()

    def current(self) -> tuple[Remote, int]:
        with self._lock:
            return self.remote, self.generation

    def refresh(self, seen: int) -> None:
        with self._lock:
            if self.generation != seen:
                return  # another connection already did
            fresh = self._resolve()
            if fresh.identity() != self.remote.identity():
                self.remote = fresh
                self.generation += 1
                raise VersionChanged(f"the file changed upstream while downloading (now {fresh.etag or fresh.size})")
            self.remote = fresh
            self.generation += 1
            log.info("fetch.resolved_again", url_origin=origin(fresh.url))


@dataclass
class Result:
    size: int
    sha256: str
    git_sha1: str
    fetched: int  # bytes received in this run


@dataclass
class Run:
    """What every transfer of one fetch shares."""

    client: httpx.Client
    halt: threading.Event
    progress: Progress
    sockets: Sockets
    connections: int
    retries: int
    deadline_s: float  # DOWNLOAD_TIMEOUT, 0 = none
    tuning: Tuning
