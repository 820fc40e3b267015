"""The S3/R2 uploader against a real S3-protocol server (moto over HTTP on loopback), also one that fails and
recovers."""

from __future__ import annotations

import hashlib
import os
import threading

import httpx
import pytest

from supervisor.outputs import Store, StoreConfig, UploadError
from tests.standins.s3 import KEY_ID, SECRET, FlakyProxy, S3Server

pytest.importorskip("boto3")
pytestmark = pytest.mark.timeout(90)
BUCKET = "outputs"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3():
    server = S3Server.start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def config(url: str, **kw) -> StoreConfig:
    return StoreConfig(bucket=kw.pop("bucket", BUCKET), endpoint=url, region="auto", access_key_id=KEY_ID,
                       secret_access_key=SECRET, **kw)


def test_upload_and_presigned_url(s3, tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1000))
    with Store(config(s3.url)) as store:
        uploaded = store.upload(path, "serverless/job-1/frame.png")
    assert (uploaded.key, uploaded.size, uploaded.content_type) == ("serverless/job-1/frame.png", 1008, "image/png")
    assert s3.get(BUCKET, "serverless/job-1/frame.png") == path.read_bytes()
    head = s3.client().head_object(Bucket=BUCKET, Key="serverless/job-1/frame.png")
    assert head["ContentType"] == "image/png"
    # The URL handed out is a presigned GET that works without credentials.
    assert "X-Amz-Signature=" in uploaded.url and "X-Amz-Expires=604800" in uploaded.url
    assert SECRET not in uploaded.url
    assert httpx.get(uploaded.url, trust_env=False).content == path.read_bytes()


def test_large_file_goes_up_in_parts(s3, tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(os.urandom(11 * MiB))
    with Store(config(s3.url), multipart_threshold=5 * MiB, multipart_chunk=5 * MiB, max_concurrency=2) as store:
        store.upload(path, "big/video.mp4")
    head = s3.client().head_object(Bucket=BUCKET, Key="big/video.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert hashlib.sha256(s3.get(BUCKET, "big/video.mp4")).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_public_url_instead_of_presigned(s3, tmp_path):
    path = tmp_path / "a b.png"
    path.write_bytes(b"x")
    with Store(config(s3.url, public_url="https://cdn.example.com/out")) as store:
        assert store.upload(path, "job/a b.png").url == "https://cdn.example.com/out/job/a%20b.png"


def test_server_down_then_back_the_upload_is_retried_until_it_lands(s3, tmp_path):
    proxy = FlakyProxy(s3.port)
    path = tmp_path / "out.png"
    path.write_bytes(os.urandom(4096))
    retries: list[int] = []
    three = threading.Event()
    result: dict = {}
    proxy.down()
    # No botocore retries here, so every failed connection is one retry of the whole upload (the outer layer).
    store = Store(config(proxy.url), attempts=30, wait_initial=0.02, wait_max=0.1, request_attempts=1)

    def upload() -> None:
        try:
            result["ok"] = store.upload(path, "flaky/out.png", on_retry=lambda n, exc: (
                retries.append(n), len(retries) >= 3 and three.set()))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            result["error"] = exc

    thread = threading.Thread(target=upload)
    thread.start()
    assert three.wait(30), f"only {len(retries)} retries"
    proxy.up()
    thread.join(30)
    store.close()
    proxy.close()
    assert "error" not in result, result.get("error")
    assert len(retries) >= 3
    assert s3.get(BUCKET, "flaky/out.png") == path.read_bytes()


def test_a_short_outage_is_absorbed_by_per_request_retries(s3, tmp_path):
    proxy = FlakyProxy(s3.port)
    path = tmp_path / "out2.png"
    path.write_bytes(os.urandom(2048))
    retries: list[int] = []
    with Store(config(proxy.url), attempts=1, request_attempts=4) as store:
        proxy.fail_next(2)
        store.upload(path, "flaky/out2.png", on_retry=lambda n, exc: retries.append(n))
    proxy.close()
    assert proxy.failed == 2 and retries == []  # botocore's own retries, not a restart of the upload
    assert s3.get(BUCKET, "flaky/out2.png") == path.read_bytes()


def test_an_outage_longer_than_the_retries_is_a_clear_error(s3, tmp_path):
    proxy = FlakyProxy(s3.port)
    proxy.down()
    path = tmp_path / "lost.png"
    path.write_bytes(b"x" * 10)
    with Store(config(proxy.url), attempts=3, wait_initial=0.01, wait_max=0.02, request_attempts=1) as store:
        with pytest.raises(UploadError) as info:
            store.upload(path, "flaky/lost.png")
    proxy.close()
    assert info.value.transient and "after 3 tries" in str(info.value)
    assert f"127.0.0.1:{proxy.port}" in str(info.value) and SECRET not in str(info.value)


def test_a_missing_bucket_fails_at_once_with_a_hint(s3, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"x")
    retries: list[int] = []
    with Store(config(s3.url, bucket="no-such-bucket"), attempts=5, wait_initial=5) as store:
        with pytest.raises(UploadError) as info:
            store.upload(path, "x.png", on_retry=lambda n, exc: retries.append(n))
    assert not info.value.transient and retries == []
    assert "NoSuchBucket" in str(info.value) and "R2_BUCKET" in str(info.value)


def test_a_missing_file_is_an_upload_error(s3, tmp_path):
    with Store(config(s3.url)) as store:
        with pytest.raises(UploadError, match="cannot upload .*gone.png"):
            store.upload(tmp_path / "gone.png", "gone.png")


def test_config_from_settings_is_off_without_a_bucket():
    from supervisor.plan import load_settings

    assert StoreConfig.from_settings(load_settings({})) is None
    settings = load_settings({"R2_BUCKET": "b", "R2_ENDPOINT": "https://acc.r2.cloudflarestorage.com",
                              "R2_ACCESS_KEY_ID": "id", "R2_SECRET_ACCESS_KEY": "secret-value-1",
                              "R2_URL_EXPIRY": "3600"})
    cfg = StoreConfig.from_settings(settings)
    assert cfg is not None and (cfg.bucket, cfg.endpoint, cfg.region, cfg.url_expiry) == (
        "b", "https://acc.r2.cloudflarestorage.com", "auto", 3600)
    assert "secret-value-1" not in repr(cfg)
