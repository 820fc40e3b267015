"""Files to an S3-compatible store (Cloudflare R2, AWS S3, MinIO, ...): upload with retries and multipart, and the
URL to hand out (public base URL or presigned GET).

    from supervisor.outputs import Store, StoreConfig
    config = StoreConfig.from_settings(settings)      # None when the R2_* variables are not set
    with Store(config) as store:
        uploaded = store.upload(path, "serverless/job-1/video.mp4")
        uploaded.url                                    # presigned for R2_URL_EXPIRY s, or R2_PUBLIC_URL/<key>

Nothing here knows about ComfyUI or RunPod: the serverless worker returns these URLs, and the output sync of the
operations issue can use the same `Store`. boto3 is imported when a `Store` is made, not with this package.
"""

from .store import Store, StoreConfig, Uploaded, UploadError

__all__ = ["Store", "StoreConfig", "Uploaded", "UploadError"]
