"""The S3-compatible backend (``backend = "s3"``): uploads go straight to a bucket, never through
a node.

* **PUT.**  A slot's PUT URL is an S3 pre-signed ``PutObject`` URL (SigV4, query
  authentication, valid ``slot_ttl`` seconds) that signs ``Content-Length`` (the slot's size)
  and, when the slot request named one, ``Content-Type``: S3 refuses (403
  ``SignatureDoesNotMatch``) a body of another length or another type, and anything else done
  with the URL (another key, another method).  The object's key is
  ``<prefix><token>/<filename>``: the token is the unguessable part, the file name keeps the
  URLs readable.
* **GET.**  ``public_url`` set: ``<public_url>/<key>`` (a bucket, or a CDN in front of it, that
  lets anyone *read* an object whose key they know but not list the bucket).  Otherwise a
  pre-signed ``GetObject`` URL valid ``get_expiry`` seconds (SigV4 caps this at 7 days, and
  temporary credentials, e.g. an instance role's, end it sooner): it names the slot's content
  type (when given) and a ``Content-Disposition`` (``attachment`` for anything a browser could
  run) for S3 to answer with.
* **Expiry.**  :meth:`S3Store.expire` lists the prefix (ListObjectsV2) and removes what was
  uploaded before the cut-off (DeleteObjects, 1000 keys per request).  A bucket lifecycle rule
  on the prefix does the same without any node.

aiobotocore (botocore's signer and endpoint rules on aiohttp) is imported only by
:meth:`S3Store.open`, so nodes on the disk backend never load it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from .server import disposition
from .slots import Slot

__all__ = ["S3Settings", "S3Store", "object_key", "public_get_url", "MAX_PUT_SIZE", "MAX_GET_EXPIRY"]

log = logging.getLogger("meridian.http_upload")

MAX_PUT_SIZE = 5 * 1024**3  # bytes one PutObject may store (larger objects need a multipart upload)
MAX_GET_EXPIRY = 7 * 86_400  # SigV4 pre-signed URLs live at most a week
DELETE_BATCH = 1000  # keys per DeleteObjects request (S3's maximum)


def base_url(value: str) -> str:
    """A ``public_url`` setting: empty, or an http(s) base URL where only ``{domain}`` may be
    replaced; without its trailing '/'."""
    if value and not value.startswith(("https://", "http://")):
        raise ValueError("a base URL: https://host[:port][/path]")
    try:
        value.format(domain="example.com")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"only {{domain}} may be replaced ({e})") from None
    return value.rstrip("/")


class S3Settings(BaseModel):
    """The ``[modules.http_upload.s3]`` table."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field("", description="the bucket (required with backend = \"s3\")")
    endpoint_url: str = Field("", description="the S3 API's base URL, e.g. https://minio.example.net:9000 "
                              "(default: AWS's endpoint for region)")
    region: str = Field("us-east-1", min_length=1, description="region the requests are signed for")
    prefix: str = Field("", description="key prefix of the uploads in the bucket, e.g. \"upload/\"")
    access_key_id: str = Field("", description="access key (default: the AWS credential chain: AWS_* "
                               "environment variables, ~/.aws, an instance or container role)")
    secret_access_key: SecretStr = Field(SecretStr(""), validate_default=True, description="its secret (or "
                                         "MERIDIAN_MODULES__HTTP_UPLOAD__S3__SECRET_ACCESS_KEY)")
    path_style: bool = Field(False, description="path-style URLs (<endpoint>/<bucket>/<key>), as most "
                             "self-hosted stores (MinIO, Ceph, Garage) want; false: virtual-hosted style "
                             "(<bucket>.<endpoint host>/<key>), as AWS wants")
    public_url: str = Field("", description="base of the GET URLs ({domain} replaced): objects readable by "
                            "key there (default: pre-signed GET URLs)")
    get_expiry: int = Field(MAX_GET_EXPIRY, ge=60, le=MAX_GET_EXPIRY, description="seconds a pre-signed GET URL "
                            "stays valid (at most 7 days)")
    timeout: float = Field(10.0, gt=0, description="seconds one request to S3 may take")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        value = value.strip()
        if value and not (3 <= len(value) <= 255 and all(c.isascii() and (c.isalnum() or c in ".-_")
                                                          for c in value)):
            raise ValueError("a bucket name: 3-255 letters, digits, '.', '-' or '_'")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("a URL: https://host[:port]")
        return value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value or any(ord(c) < 32 for c in value):
            raise ValueError("a key prefix like \"upload/\" (no leading '/')")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return base_url(value)

    @field_validator("secret_access_key")
    @classmethod
    def _pair(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        if bool(info.data.get("access_key_id")) != bool(value.get_secret_value()):
            raise ValueError("give both access_key_id and secret_access_key, or neither (the AWS credential chain)")
        return value

    def missing(self) -> str | None:
        """What backend = "s3" still needs, or None."""
        return None if self.bucket else "bucket is required with backend = \"s3\" ([modules.http_upload.s3] bucket)"


def object_key(prefix: str, slot: Slot) -> str:
    """The object a slot's file is stored as: ``<prefix><token>/<filename>``."""
    return f"{prefix}{slot.token}/{slot.filename}"


def public_get_url(base: str, key: str) -> str:
    """``<base>/<key>``, each path segment of the key percent-encoded."""
    return f"{base.rstrip('/')}/{quote(key, safe='/')}"


def _older(objects: Iterable[dict[str, Any]], created_before: float) -> list[str]:
    cut = datetime.fromtimestamp(created_before, UTC)
    out = []
    for obj in objects:
        modified = obj.get("LastModified")
        if isinstance(modified, datetime) and modified.astimezone(UTC) < cut:
            out.append(str(obj["Key"]))
    return out


class S3Store:
    """A bucket (and key prefix) of an S3-compatible store, through one aiobotocore client."""

    def __init__(self, cfg: S3Settings, client: Any, stack: contextlib.AsyncExitStack) -> None:
        self.cfg = cfg
        self.client = client
        self._stack = stack

    @classmethod
    async def open(cls, cfg: S3Settings) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            signature_version="s3v4", region_name=cfg.region,
            s3={"addressing_style": "path" if cfg.path_style else "virtual"},
            connect_timeout=cfg.timeout, read_timeout=cfg.timeout, retries={"max_attempts": 3, "mode": "standard"},
            # Checksums only where S3 requires them (DeleteObjects): many S3-compatible stores do not
            # know the CRC headers botocore adds by default, and a pre-signed PUT must not ask for one.
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        secret = cfg.secret_access_key.get_secret_value()
        credentials = {"aws_access_key_id": cfg.access_key_id, "aws_secret_access_key": secret} if secret else {}
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(get_session().create_client(
            "s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url or None, config=config, **credentials))
        return cls(cfg, client, stack)

    async def close(self) -> None:
        await self._stack.aclose()

    async def check(self) -> str | None:
        """Why the bucket cannot be used (HeadBucket: missing, no rights, unreachable…), or None."""
        try:
            await self.client.head_bucket(Bucket=self.cfg.bucket)
        except Exception as e:
            return f"{e.__class__.__name__}: {e}"
        return None

    def key(self, slot: Slot) -> str:
        return object_key(self.cfg.prefix, slot)

    async def put_url(self, slot: Slot, ttl: int) -> str:
        """The pre-signed PutObject URL of ``slot``: its size and content type are signed headers."""
        params: dict[str, Any] = {"Bucket": self.cfg.bucket, "Key": self.key(slot), "ContentLength": slot.size}
        if slot.content_type:
            params["ContentType"] = slot.content_type
        return str(await self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=ttl))

    async def get_url(self, slot: Slot, domain: str) -> str:
        if self.cfg.public_url:
            return public_get_url(self.cfg.public_url.format(domain=domain), self.key(slot))
        params: dict[str, Any] = {"Bucket": self.cfg.bucket, "Key": self.key(slot),
                                  "ResponseContentDisposition": disposition(slot.content_type, slot.filename)}
        if slot.content_type:
            params["ResponseContentType"] = slot.content_type
        return str(await self.client.generate_presigned_url("get_object", Params=params,
                                                             ExpiresIn=self.cfg.get_expiry))

    async def expire(self, created_before: float) -> int:
        """Delete the objects under the prefix uploaded before ``created_before``; how many went."""
        removed = 0
        old: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=self.cfg.prefix):
            old += _older(page.get("Contents") or (), created_before)
            while len(old) >= DELETE_BATCH:
                removed += await self._delete(old[:DELETE_BATCH])
                old = old[DELETE_BATCH:]
        if old:
            removed += await self._delete(old)
        return removed

    async def _delete(self, keys: list[str]) -> int:
        answer = await self.client.delete_objects(
            Bucket=self.cfg.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        errors = answer.get("Errors") or []
        for error in errors[:3]:
            log.warning("http_upload: S3 did not delete %s: %s %s", error.get("Key"), error.get("Code"),
                        error.get("Message"))
        return len(keys) - len(errors)
