"""Redis connections: where to connect, with retries, without leaking passwords.

The URL comes from the argument, else ``VECTORSTORE_URL``, else ``REDIS_URL``,
else ``redis://localhost:6379/0``. ``redis://``, ``rediss://`` (TLS),
``unix://`` and ``user:password@`` all work, as in redis-py.

>>> redact("redis://worker:s3cret@db:6379/0")
'redis://worker:***@db:6379/0'
>>> redact("unix:///tmp/r.sock?password=s3cret&db=2")
'unix:///tmp/r.sock?password=***&db=2'
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator, Optional

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

DEFAULT_URL = "redis://localhost:6379/0"
RETRIES = 5


def resolve_url(url: Optional[str] = None) -> str:
    """The Redis URL to use: ``url``, or the environment, or the default."""
    return url or os.environ.get("VECTORSTORE_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    url = re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def connect(url: Optional[str] = None, retries: int = RETRIES, **kwargs) -> redis.Redis:
    """A redis-py client for ``url`` that retries transient errors with backoff.

    Connections open lazily on first use; redis-py's pool re-creates its
    connections after a fork, so a client made before Celery forks is safe.
    """
    url = resolve_url(url)
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries)
    return redis.Redis.from_url(
        url,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
        socket_read_size=256 * 1024,  # a 100-token 300-d document is ~120 kB
        **kwargs,
    )


@contextmanager
def connection(url: Optional[str] = None,
               client: Optional[redis.Redis] = None) -> Iterator[redis.Redis]:
    """``client`` as is (left open), or a new :func:`connect` to ``url``, closed on exit.

    For functions that take ``url=`` or ``client=`` (the client wins).

    >>> with connection("redis://localhost:6379/0") as r:            # doctest: +SKIP
    ...     r.ping()
    True
    """
    if client is not None:
        yield client
        return
    r = connect(url)
    try:
        yield r
    finally:
        r.close()
