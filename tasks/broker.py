"""Redis connection options shared by the workers (``celeryconfig``) and the clients
(:func:`tasks.client.client_app`): every call on the broker and the result backend has
a timeout, and a restart of Redis, or a Sentinel failover, is retried rather than fatal.

Supported broker topologies: a standalone Redis (``redis://``), a Redis primary with
replicas watched by Redis Sentinel (``sentinel://host:port/db;sentinel://...``: name
the primary in ``CELERY_SENTINEL_MASTER``), RabbitMQ (``amqp://``). Not Redis Cluster:
Celery cannot use it as a broker (celery#2852, kombu#526).

>>> REDIS_SOCKET_OPTIONS["socket_timeout"] > REDIS_SOCKET_OPTIONS["socket_connect_timeout"]
True
>>> sentinel_options({"CELERY_SENTINEL_MASTER": "queue"})["master_name"]
'queue'
>>> sentinel_options({})
{}
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: Broker (``broker_transport_options``) socket settings. A frozen Redis fails a call
#: after ``socket_timeout`` s instead of hanging it; kombu's BRPOP waits 1 s, well under.
REDIS_SOCKET_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 25,
    "retry_on_timeout": True,
}

#: Environment variable naming the primary the sentinels watch (``SENTINEL MONITOR <name>``),
#: for ``sentinel://`` broker and result backend URLs.
SENTINEL_MASTER = "CELERY_SENTINEL_MASTER"

#: Sending a task retries for ~35 s (kombu's default gives up after ~0.6 s), long enough
#: for a Redis restart or a Sentinel failover (~3-5 s with a short down-after-milliseconds).
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 20, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


def sentinel_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Transport options for ``sentinel://`` URLs: the primary's name from
    ``CELERY_SENTINEL_MASTER`` and timeouts on the calls to the sentinels themselves
    (celery's Sentinel result backend sets none by default); ``{}`` when it is unset.
    Harmless for ``redis://`` URLs, which ignore them."""
    name = environ.get(SENTINEL_MASTER)
    if not name:
        return {}
    timeouts = {k: REDIS_SOCKET_OPTIONS[k] for k in ("socket_timeout", "socket_connect_timeout")}
    return {"master_name": name, "sentinel_kwargs": timeouts}


def check_sentinel(urls: Mapping[str, str | None], environ: Mapping[str, str] = os.environ
                   ) -> None:
    """Raise ValueError if one of ``urls`` (setting name -> URL) is a ``sentinel://`` URL
    and ``CELERY_SENTINEL_MASTER`` is unset (the message shows no URL, so no password).

    >>> check_sentinel({"CELERY_BROKER_URL": "sentinel://s1:26379/0"}, {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: CELERY_BROKER_URL is a sentinel:// URL: set CELERY_SENTINEL_MASTER ...
    """
    for setting, url in urls.items():
        if url and url.startswith("sentinel://") and not environ.get(SENTINEL_MASTER):
            raise ValueError(f"{setting} is a sentinel:// URL: set {SENTINEL_MASTER} to the "
                             f"name the sentinels watch the Redis primary under")


def connection_settings() -> dict[str, Any]:
    """Celery settings making the broker and Redis result backend connections bounded
    and retried (used by the workers and by :func:`tasks.client.client_app`). A client's
    result subscription reconnects with Celery's own policy (20 tries, ~20 s). With
    ``CELERY_SENTINEL_MASTER`` set, ``sentinel://`` URLs find the primary through the
    sentinels (see :func:`sentinel_options`)."""
    sentinel = sentinel_options()
    return {
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {**REDIS_SOCKET_OPTIONS, **sentinel},
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "result_backend_transport_options": sentinel,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "redis_socket_timeout": REDIS_SOCKET_OPTIONS["socket_timeout"],
        "redis_socket_connect_timeout": REDIS_SOCKET_OPTIONS["socket_connect_timeout"],
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": REDIS_SOCKET_OPTIONS["health_check_interval"],
        "redis_retry_on_timeout": True,
    }
