"""Redis connection options shared by the workers (``celeryconfig``) and the clients
(:func:`tasks.client.client_app`): every call on the broker and the result backend has
a timeout, and a restart of Redis is retried rather than fatal.

>>> REDIS_SOCKET_OPTIONS["socket_timeout"] > REDIS_SOCKET_OPTIONS["socket_connect_timeout"]
True
"""
from __future__ import annotations

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


def connection_settings() -> dict[str, Any]:
    """Celery settings making the broker and Redis result backend connections bounded
    and retried (used by the workers and by :func:`tasks.client.client_app`). A client's
    result subscription reconnects with Celery's own policy (20 tries, ~20 s)."""
    return {
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
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
