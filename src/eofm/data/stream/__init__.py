"""Pools in object storage (``s3://``, ``gs://``, ``az://``), streamed with litdata.

- ``remote``: URL parsing, client options (``$AWS_ENDPOINT_URL``, bounded retries with
  backoff) and the checks that name the URL and the fix (unreachable store, credentials,
  missing or truncated chunks).
- ``pack``: :func:`pack_to_url` writes a dataset's chunks, its description and its card.
- ``pool``: :class:`StreamedPool` reads them back as eofm samples (imports litdata).
"""

from __future__ import annotations

from typing import Any

from eofm.data.stream.remote import PoolURL, is_remote, parse_url

__all__ = ["PoolURL", "StreamedPool", "is_remote", "pack_to_url", "parse_url"]


def __getattr__(name: str) -> Any:
    if name == "StreamedPool":
        from eofm.data.stream.pool import StreamedPool

        return StreamedPool
    if name == "pack_to_url":
        from eofm.data.stream.pack import pack_to_url

        return pack_to_url
    raise AttributeError(name)
