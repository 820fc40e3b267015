"""A real S3-protocol server for tests: moto in server mode over HTTP on loopback, optionally behind a proxy that
fails connections on demand (a server that goes away and comes back).

    server = S3Server.start()            # moto's ThreadedMotoServer on 127.0.0.1:<free port>
    server.create_bucket("outputs")
    proxy = FlakyProxy(server.port)      # clients talk to proxy.url; proxy.down() / proxy.up() / proxy.fail_next(n)
    ...
    proxy.close(); server.stop()

The proxy works on TCP: a failing connection is accepted and closed before a byte is read, which a client sees
as a reset or a closed connection (what a restarting server or a dropped load balancer gives).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

KEY_ID = "test-key-id"
SECRET = "test-secret-access-key-0123456789"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    server: object
    port: int

    @classmethod
    def start(cls) -> "S3Server":
        from moto.server import ThreadedMotoServer

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        return cls(server, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, url: str | None = None):
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=url or self.url, region_name=REGION,
                                              aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]


class FlakyProxy:
    """TCP proxy to 127.0.0.1:upstream that fails connections while down, or the next N."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Condition()
        self._down = False
        self._fail_next = 0
        self.failed = 0  # connections failed so far
        self.forwarded = 0
        self._closed = False
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self._down = True
            self._drop_open()

    def up(self) -> None:
        with self._lock:
            self._down = False

    def fail_next(self, count: int) -> None:
        with self._lock:
            self._fail_next = count
            self._drop_open()  # kept-alive connections would otherwise skip the failures

    def wait_failed(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.failed < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.failed} of {count} connections failed in {timeout} s")
                self._lock.wait(left)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            self._drop_open()

    def _drop_open(self) -> None:
        for conn in self._open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._open.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                fail = self._down or self._fail_next > 0
                if fail:
                    self._fail_next = max(0, self._fail_next - 1)
                    self.failed += 1
                    self._lock.notify_all()
                else:
                    self.forwarded += 1
            if fail:
                # RST instead of FIN: the client sees "connection reset", like a server that went away.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _throttle(self, src: socket.socket, data: bytes) -> None:
        """Called before each chunk is passed on: a subclass slows one direction down."""

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._throttle(src, data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._open = [s for s in self._open if s not in (src, dst)]
