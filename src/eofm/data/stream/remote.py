"""Object-storage URLs of streamed pools: parsing, client options, and checks that turn an
unreachable endpoint, missing credentials or a missing/truncated chunk into a clear error."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from eofm.errors import ConfigError, CorruptFileError, DataError

#: URL schemes of object stores, and the scheme litdata uses for each.
SCHEMES = {"s3": "s3", "gs": "gs", "az": "azure", "azure": "azure"}
#: Schemes litdata 0.2.76 can write to (``optimize``); Azure is read-only there.
WRITABLE = ("s3", "gs")
#: Environment variable naming an S3-compatible endpoint (MinIO, moto, Ceph...).
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
#: Attempts per S3 request (botocore's ``standard`` retry mode: exponential backoff with
#: jitter on connection errors, throttling and 5xx answers).
ATTEMPTS_ENV = "EOFM_STORAGE_ATTEMPTS"
#: eofm's description of a pool (bands, sensor, classes, dtype), next to litdata's index.
POOL_META = "eofm_pool.json"
#: litdata's chunk index.
LITDATA_INDEX = "index.json"
CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL "
    "for an S3-compatible store"
)


def is_remote(spec: str) -> bool:
    """True for ``s3://``, ``gs://``, ``az://`` (``azure://``) URLs."""
    return "://" in spec and urlparse(spec).scheme in SCHEMES


@dataclass(frozen=True)
class PoolURL:
    """A pool's location: ``scheme://bucket/prefix``."""

    url: str
    scheme: str
    bucket: str
    prefix: str

    @property
    def litdata_url(self) -> str:
        """The URL in litdata's spelling (``az://`` becomes ``azure://``)."""
        return f"{SCHEMES[self.scheme]}://{self.bucket}/{self.prefix}".rstrip("/")

    def child(self, name: str) -> str:
        """URL of the object ``name`` inside the pool (litdata's spelling)."""
        return f"{self.litdata_url}/{name}"

    def key(self, name: str) -> str:
        """Object key of ``name`` inside the bucket."""
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_url(spec: str) -> PoolURL:
    """``s3://bucket/prefix`` -> :class:`PoolURL`; a clear :class:`ConfigError` otherwise."""
    parsed = urlparse(spec)
    if parsed.scheme not in SCHEMES or not parsed.netloc:
        raise ConfigError(
            f"{spec!r} is not an object-storage URL; write s3://bucket/prefix (or gs://, az://)"
        )
    return PoolURL(spec, parsed.scheme, parsed.netloc, parsed.path.strip("/"))


def endpoint() -> str | None:
    """The S3 endpoint of ``$AWS_ENDPOINT_URL`` (``None``: AWS itself)."""
    return os.environ.get(ENDPOINT_ENV) or None


def attempts() -> int:
    """Attempts per S3 request (``$EOFM_STORAGE_ATTEMPTS``, default 5)."""
    raw = os.environ.get(ATTEMPTS_ENV, "5")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ConfigError(f"{ATTEMPTS_ENV}={raw!r} is not a whole number") from None


def _allow_http() -> None:
    """Let litdata's obstore client talk plain HTTP (a local S3 such as MinIO or moto).

    litdata 0.2.76 passes fixed client options to obstore, which refuses ``http://``
    endpoints unless ``allow_http`` is among them; its boto3 path has no such rule.
    """
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"


def prepare_process() -> None:
    """Per-process setup litdata needs (an ``http://`` endpoint: see :func:`_allow_http`);
    spawned workers call it again, as module state does not cross ``spawn``."""
    url = endpoint()
    if url and url.startswith("http://"):
        _allow_http()


def storage_options(pool: PoolURL) -> dict[str, Any]:
    """Client options litdata passes to boto3 for ``pool`` (endpoint, bounded retries)."""
    if pool.scheme != "s3":
        return {}
    import botocore.config

    options: dict[str, Any] = {
        "config": botocore.config.Config(
            retries={"max_attempts": attempts(), "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
    }
    url = endpoint()
    if url:
        options["endpoint_url"] = url
    prepare_process()
    return options


def s3_client(pool: PoolURL) -> Any:
    """A boto3 S3 client with :func:`storage_options`."""
    import boto3

    return boto3.session.Session().client("s3", **storage_options(pool))


def explain(exc: BaseException, url: str, doing: str) -> DataError:
    """A :class:`DataError` naming ``url``, what failed and the fix, for a boto3 error."""
    from botocore import exceptions as bx

    where = f" at {endpoint()} ({ENDPOINT_ENV})" if endpoint() else ""
    if isinstance(exc, bx.NoCredentialsError):
        return DataError(url, f"no credentials to {doing}", CREDENTIALS_FIX)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return DataError(
            url,
            f"cannot reach the object store{where} to {doing} (tried {attempts()} times with "
            f"backoff): {exc}",
            f"start the store or set {ENDPOINT_ENV} to its address; more tries: {ATTEMPTS_ENV}",
        )
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return DataError(
                url, f"the store refused the credentials to {doing} ({code})", CREDENTIALS_FIX
            )
        if code in ("NoSuchBucket",):
            return DataError(
                url,
                f"bucket {urlparse(url).netloc!r} does not exist{where}",
                "create it, or fix the URL",
            )
        return DataError(url, f"cannot {doing}: {exc}")
    return DataError(url, f"cannot {doing}: {exc}")


def _boto_errors() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bx

    return (bx.BotoCoreError, bx.ClientError)


def check_writable(pool: PoolURL) -> None:
    """Fail early, with the fix, when ``pool`` cannot be written or already holds a pool."""
    if pool.scheme not in WRITABLE:
        raise ConfigError(
            f"{pool.url}: litdata writes pools to {', '.join(s + '://' for s in WRITABLE)} only; "
            "pack to s3:// or gs:// (az:// pools can be read)"
        )
    if pool.scheme != "s3":
        return
    client = s3_client(pool)
    try:
        client.head_bucket(Bucket=pool.bucket)
        found = client.list_objects_v2(Bucket=pool.bucket, Prefix=pool.key(LITDATA_INDEX))
    except _boto_errors() as exc:
        raise explain(exc, pool.url, "write the pool") from None
    if found.get("KeyCount", 0):
        raise DataError(pool.url, "already holds a pool", "pack to a new prefix or delete it first")


def check_pool(pool: PoolURL, *, meta: bool = True) -> dict[str, Any]:
    """Read the pool's index and eofm metadata; check that every chunk is there, whole.

    Returns the metadata of :data:`POOL_META` (``index``: litdata's chunk index; ``meta=False``:
    only the index). A missing or truncated chunk raises a :class:`CorruptFileError` naming the
    chunk's URL (gs:// and az:// pools: no chunk check).
    """
    if pool.scheme != "s3":
        return _read_meta_fs(pool)
    client = s3_client(pool)
    try:
        index = _get_json(client, pool, LITDATA_INDEX)
        out = _get_json(client, pool, POOL_META) if meta else {}
        sizes: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=pool.bucket, Prefix=pool.key("")
        ):
            for obj in page.get("Contents", []):
                sizes[obj["Key"]] = int(obj["Size"])
    except _boto_errors() as exc:
        raise explain(exc, pool.url, "read the pool") from None
    for chunk in index.get("chunks", []):
        name = chunk["filename"]
        size = sizes.get(pool.key(name))
        if size is None:
            raise CorruptFileError(
                pool.child(name), "chunk is missing from the pool", "pack the pool again"
            )
        if size != int(chunk["chunk_bytes"]):
            raise CorruptFileError(
                pool.child(name),
                f"chunk has {size} bytes, its index says {chunk['chunk_bytes']} (truncated or "
                "overwritten)",
                "pack the pool again",
            )
    out["index"] = index
    return out


def _get_json(client: Any, pool: PoolURL, name: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=pool.bucket, Key=pool.key(name))["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
            raise DataError(
                pool.child(name),
                "not found: no eofm pool at this URL",
                f"write one with `eofm data pack <folder> {pool.url}`",
            ) from None
        raise
    try:
        out: dict[str, Any] = json.loads(body)
    except ValueError as exc:
        raise CorruptFileError(pool.child(name), f"cannot be read as JSON: {exc}") from None
    return out


def _read_meta_fs(pool: PoolURL) -> dict[str, Any]:
    """gs:// and az:// pools: the metadata through litdata's downloaders (no chunk check)."""
    import tempfile

    from litdata.streaming.downloader import get_downloader

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loader = get_downloader(pool.litdata_url, tmp, [], storage_options(pool))
        for name, key in ((POOL_META, "meta"), (LITDATA_INDEX, "index")):
            local = os.path.join(tmp, name)
            try:
                loader.download_file(pool.child(name), local)
                with open(local, encoding="utf-8") as f:
                    out[key] = json.load(f)
            except Exception as exc:  # each provider raises its own SDK's errors
                raise DataError(
                    pool.child(name),
                    f"cannot read: {exc}",
                    "check the URL and the store's credentials (GOOGLE_APPLICATION_CREDENTIALS, "
                    "AZURE_STORAGE_CONNECTION_STRING)",
                ) from exc
    meta: dict[str, Any] = out["meta"]
    meta["index"] = out["index"]
    return meta


def upload(pool: PoolURL, local: str, name: str) -> None:
    """Upload the local file ``local`` as ``name`` inside the pool."""
    from litdata.streaming.fs_provider import _get_fs_provider

    try:
        _get_fs_provider(pool.child(name), storage_options(pool)).upload_file(
            local, pool.child(name)
        )
    except _boto_errors() as exc:
        raise explain(exc, pool.child(name), "upload") from None


def download_text(pool: PoolURL, name: str) -> str:
    """The text of the object ``name`` inside the pool."""
    if pool.scheme == "s3":
        try:
            return json.dumps(_get_json(s3_client(pool), pool, name))
        except _boto_errors() as exc:
            raise explain(exc, pool.child(name), "download") from None
    import tempfile

    from litdata.streaming.downloader import get_downloader

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        get_downloader(pool.litdata_url, tmp, [], storage_options(pool)).download_file(
            pool.child(name), local
        )
        with open(local, encoding="utf-8") as f:
            return f.read()
