"""`Store`: one bucket of an S3-compatible service, through boto3.

Retries come in two layers. botocore retries each request (`standard` mode: connection errors, timeouts, 5xx,
throttling), so one failed part of a multipart upload is sent again on its own. Around the whole upload, tenacity
starts it over with exponential backoff when botocore gave up on a transient failure (the service was down for
longer than botocore's few attempts); errors that another try cannot fix (access denied, no such bucket, a missing
file) fail at once. Files of at least `multipart_threshold` bytes go up in parts of `multipart_chunk` bytes,
`max_concurrency` at a time (boto3's TransferConfig).
"""

from __future__ import annotations

import mimetypes
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

MiB = 1024 * 1024
# HTTP statuses worth another try; everything else from the service is an answer, not an accident.
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT_CODES = {"RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "InternalError", "ServiceUnavailable",
                   "Throttling", "ThrottlingException"}


class UploadError(Exception):
    """An upload that failed for good; the message says what and why, never a credential."""

    def __init__(self, message: str, key: str = "", transient: bool = False):
        super().__init__(message)
        self.key = key
        self.transient = transient


@dataclass(frozen=True)
class StoreConfig:
    bucket: str
    endpoint: str | None = None  # None: AWS S3 itself
    region: str = "auto"  # R2 wants "auto"; AWS S3 the bucket's region
    access_key_id: str = field(default="", repr=False)  # empty: boto3's own chain (env, profile, IAM role)
    secret_access_key: str = field(default="", repr=False)
    public_url: str = ""  # e.g. an R2 custom domain; URLs are then public_url/<key>, not presigned
    url_expiry: int = 7 * 24 * 3600  # seconds a presigned URL stays valid (SigV4 allows at most 7 days)

    @classmethod
    def from_settings(cls, settings: Any) -> "StoreConfig | None":
        """From the R2_* settings; None when R2_BUCKET is not set (uploads off)."""
        bucket = str(getattr(settings, "r2_bucket", "") or "").strip()
        if not bucket:
            return None
        return cls(bucket=bucket, endpoint=str(settings.r2_endpoint or "").strip() or None,
                   region=str(settings.r2_region or "auto"), access_key_id=str(settings.r2_access_key_id or ""),
                   secret_access_key=str(settings.r2_secret_access_key or ""),
                   public_url=str(settings.r2_public_url or "").rstrip("/"), url_expiry=int(settings.r2_url_expiry))

    @property
    def where(self) -> str:
        return f"{self.endpoint or 's3'}/{self.bucket}"


@dataclass(frozen=True)
class Uploaded:
    key: str
    url: str
    size: int
    content_type: str


class Store:
    def __init__(self, config: StoreConfig, *, attempts: int = 4, wait_initial: float = 1.0, wait_max: float = 30.0,
                 request_attempts: int = 4, multipart_threshold: int = 64 * MiB, multipart_chunk: int = 16 * MiB,
                 max_concurrency: int = 4, connect_timeout: float = 10.0, read_timeout: float = 60.0):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.config = config
        self.attempts, self.wait_initial, self.wait_max = attempts, wait_initial, wait_max
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=config.endpoint, region_name=config.region,
            aws_access_key_id=config.access_key_id or None, aws_secret_access_key=config.secret_access_key or None,
            config=Config(retries={"mode": "standard", "max_attempts": request_attempts},
                          connect_timeout=connect_timeout, read_timeout=read_timeout, signature_version="s3v4",
                          s3={"addressing_style": "path"} if config.endpoint else None))
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk,
                                        max_concurrency=max_concurrency, use_threads=max_concurrency > 1)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def upload(self, path: str | os.PathLike, key: str, content_type: str | None = None,
               on_retry: Callable[[int, BaseException], None] | None = None) -> Uploaded:
        """Upload one file under `key`; returns its size and URL. Raises UploadError."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UploadError(f"cannot upload {path}: {exc.strerror or exc}", key) from None
        kind = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        def attempt() -> None:
            self._client.upload_file(str(path), self.config.bucket, key, ExtraArgs={"ContentType": kind},
                                     Config=self._transfer)

        def before_sleep(state: Any) -> None:
            if on_retry is not None and state.outcome is not None:
                on_retry(state.attempt_number, state.outcome.exception())

        retrying = Retrying(stop=stop_after_attempt(self.attempts),
                            wait=wait_exponential(multiplier=self.wait_initial, max=self.wait_max)
                            + wait_random(0, self.wait_initial),
                            retry=retry_if_exception(is_transient), before_sleep=before_sleep, reraise=True)
        try:
            retrying(attempt)
        except Exception as exc:  # boto3, botocore and s3transfer raise many types; all end here
            transient = is_transient(exc)
            tries = f" after {self.attempts} tries" if transient else ""
            raise UploadError(f"upload of {path.name} to {self.config.where}/{key} failed{tries}: {describe(exc)}",
                              key, transient) from None
        return Uploaded(key=key, url=self.url(key), size=size, content_type=kind)

    def url(self, key: str) -> str:
        """Where a client can GET `key`: under R2_PUBLIC_URL when set, else a presigned URL."""
        if self.config.public_url:
            return f"{self.config.public_url}/{urllib.parse.quote(key)}"
        return self.presign(key)

    def presign(self, key: str, expires: int | None = None) -> str:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.config.bucket, "Key": key},
            ExpiresIn=int(expires if expires is not None else self.config.url_expiry))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _client_error(exc: BaseException) -> Any:
    for item in _chain(exc):
        if hasattr(item, "response") and isinstance(getattr(item, "response"), dict):
            return item
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures that another try may fix: the connection, a timeout, 5xx, throttling."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    error = _client_error(exc)
    if error is not None:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code", "")
        return status in TRANSIENT_STATUS or code in TRANSIENT_CODES
    return any(isinstance(item, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))
               for item in _chain(exc))


def describe(exc: BaseException) -> str:
    error = _client_error(exc)
    if error is not None:
        info = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        hint = {"AccessDenied": "check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY and the key's permissions",
                "InvalidAccessKeyId": "check R2_ACCESS_KEY_ID", "SignatureDoesNotMatch": "check R2_SECRET_ACCESS_KEY",
                "NoSuchBucket": "create the bucket or fix R2_BUCKET"}.get(info.get("Code", ""))
        text = f"{info.get('Code', 'error')} (HTTP {status}): {info.get('Message', '')}".strip().rstrip(":")
        return f"{text}; {hint}" if hint else text
    root = _chain(exc)[-1]
    return f"{type(root).__name__}: {root}"
