"""Who may read the status page, `/status` and `/metrics`, and on which address the server listens.

By default the server listens on STATUS_ADDR (loopback), so only the pod itself can ask. `STATUS_PUBLIC=true`
binds every interface on STATUS_ADDR's port (RunPod's HTTP proxy, a compose port; a non-loopback STATUS_ADDR, as
Kubernetes sets for its probes, is kept). With `STATUS_TOKEN` set, everything except `/healthz` and `/readyz`
then needs the token from other hosts (without one, everything is open and the settings warn):

* `Authorization: Bearer <token>` (scripts, Prometheus' `authorization` block);
* the page's login form (POST /login), or `?token=<token>` once in a link: answered with a redirect to the page
  without the token and a cookie (HttpOnly, SameSite=Strict) holding an HMAC of the token, not the token itself;
* connections from loopback need nothing: that is the pod itself (`supervisor health`, the ComfyUI node that
  shows the download progress inside ComfyUI).

Nothing the server shows can change anything, and no secret is in it (every value went through the redaction of
logs.py or never held one); the token keeps the pod's plan, file names and logs to its owner.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

COOKIE = "supervisor_status"
_COOKIE_LABEL = b"comfyui-pod-supervisor status cookie v1"


def bind_address(settings: Any) -> tuple[str, int]:
    """Where the status server listens: STATUS_ADDR; with STATUS_PUBLIC and a loopback STATUS_ADDR, every
    interface on its port."""
    host, port = settings.status_addr
    if getattr(settings, "status_public", False) and _loopback(host if host != "localhost" else "127.0.0.1"):
        return "0.0.0.0", port
    return host, port


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    redirect: str = ""  # answer 303 to this location, setting `cookie`
    cookie: str = ""


class Access:
    def __init__(self, token: str = ""):
        self._token = token.encode()
        self._cookie = hmac.new(self._token, _COOKIE_LABEL, hashlib.sha256).hexdigest() if token else ""

    @classmethod
    def from_settings(cls, settings: Any) -> "Access":
        return cls(str(getattr(settings, "status_token", "") or ""))

    @property
    def required(self) -> bool:
        return bool(self._token)

    def check(self, client: str, target: str, headers: Mapping[str, str]) -> Verdict:
        """May `client` (an IP address) GET `target` (path and query) with these request headers?"""
        if not self._token or _loopback(client):
            return Verdict(True)
        auth = headers.get("Authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and self._equal(given.strip().encode()):
            return Verdict(True)
        if self._cookie and hmac.compare_digest(_cookie(headers.get("Cookie") or "").encode(), self._cookie.encode()):
            return Verdict(True)
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qsl(query, keep_blank_values=True)
        tokens = [value for key, value in params if key == "token"]
        if tokens and self._equal(tokens[-1].encode()):
            rest = urllib.parse.urlencode([(k, v) for k, v in params if k != "token"])
            # A relative Location keeps whatever prefix a proxy put in front of us.
            location = "./" + path.rsplit("/", 1)[-1] + (f"?{rest}" if rest else "")
            return Verdict(True, redirect=location, cookie=self._set_cookie())
        return Verdict(False)

    def login(self, form: bytes) -> Verdict:
        """The login form's POST body (`token=...`): a redirect to the page with the cookie, or not allowed."""
        params = urllib.parse.parse_qs(form.decode("utf-8", "replace"))
        given = (params.get("token") or [""])[-1].strip()
        if self._token and self._equal(given.encode()):
            return Verdict(True, redirect="./", cookie=self._set_cookie())
        return Verdict(False)

    def _set_cookie(self) -> str:
        return f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000"

    def _equal(self, given: bytes) -> bool:
        return bool(given) and hmac.compare_digest(given, self._token)


def _cookie(header: str) -> str:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


def _loopback(client: str) -> bool:
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
