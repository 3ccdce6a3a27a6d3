"""Celery settings of the vectorstore workers, read from the environment.

Run from the repository root (Celery imports this module from the working
directory)::

    CELERY_BROKER_URL=redis://broker:6379/0 CELERY_RESULT_BACKEND=redis://broker:6379/1 \\
    VECTORSTORE_URL=redis://vectors:6379/0 VECTORSTORE_MODEL=news \\
    celery -A tasks worker --autoscale=8,2

=============================  ===============================  ==============================
variable                       default                          meaning
=============================  ===============================  ==============================
CELERY_BROKER_URL              redis://localhost:6379/0         broker: redis:// (standalone),
                                                                sentinel://h:p/db;sentinel://..
                                                                (Redis Sentinel), amqp://
CELERY_RESULT_BACKEND          the broker URL                   where results go
CELERY_SENTINEL_MASTER         (none)                           primary's name at the sentinels
                                                                (needed by sentinel:// URLs)
VECTORSTORE_URL                REDIS_URL, else localhost        Redis holding the vectors
VECTORSTORE_MODEL              (none)                           model when a task names none
VECTORSTORE_PREFIX             vs                               key namespace of the models
VECTORSTORE_CACHE_BYTES        33554432 (32 MiB)                hot-vector cache per model
                                                                per pool process (0: off)
VECTORSTORE_PREWARM            1                                cache the default model's most
                                                                frequent vectors before the
                                                                pool forks (0: off)
VECTORSTORE_PREWARM_BYTES      268435456 (256 MiB)              bytes of them, one copy per
                                                                worker, shared by its pool
VECTORSTORE_REFRESH            1.0                              seconds between checks for a
                                                                new model version
VECTORSTORE_MAX_TOKENS         10000                            tokens per document, and per
                                                                batch request in all
VECTORSTORE_MAX_TOKEN_CHARS    1000                             characters per token
VECTORSTORE_MAX_RESULT_BYTES   8388608 (8 MiB)                  bytes per result (array and
                                                                echoed OOV tokens)
VECTORSTORE_TASK_RETRIES       3                                retries when the store is
                                                                unreachable (backoff 1, 2, 4 s)
CELERY_TASK_SOFT_TIME_LIMIT    30                               seconds, then the task fails
CELERY_TASK_TIME_LIMIT         60                               seconds, then the process is
                                                                killed
CELERY_RESULT_EXPIRES          600                              seconds a result is kept
CELERY_VISIBILITY_TIMEOUT      600                              seconds before a task whose
                                                                worker died is redelivered
=============================  ===============================  ==============================

Why these defaults:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged
  only once done; if its pool process dies (OOM, SIGKILL) the worker puts it
  back on the queue at once. If the whole worker dies, the Redis broker
  redelivers the unacknowledged task after ``CELERY_VISIBILITY_TIMEOUT``; that
  must exceed the longest a reserved task may wait and run (time limit, retry
  countdowns), or running tasks are delivered twice.
* Broker topologies: a standalone Redis, Redis Sentinel (a primary with
  replicas; the sentinels promote a replica when the primary dies, and the
  workers, clients and result backend follow it), or RabbitMQ. Redis Cluster
  cannot be a Celery broker (celery#2852, kombu#526). Sending a task retries for
  ~35 s, through a restart or a failover (``tasks.broker``).
* ``worker_prefetch_multiplier = 1``: a worker reserves one task per process,
  so a burst spreads over workers and ``--autoscale`` sees the backlog.
* Results are msgpack (raw array bytes, no base64); arguments are JSON so any
  service can send tasks; nothing else, and never pickle, is accepted. The
  Redis result backend PUBLISHes every result and Redis cuts pubsub clients off
  past 32 MB, hence ``VECTORSTORE_MAX_RESULT_BYTES`` well below that.
"""
import os

from tasks.broker import check_sentinel, connection_settings
from tasks.results import CONTENT_TYPES, MAX_RESULT_BYTES, RESULT_SERIALIZER, TASK_SERIALIZER
from tasks.validate import MAX_TOKEN_CHARS
from vectorstore.store import default_cache_bytes, default_prewarm_bytes


def _number(name: str, default: float, kind: type = int) -> float:
    raw = os.environ.get(name)
    try:
        value = default if raw is None else kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


broker_url = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
result_backend = os.environ.get("CELERY_RESULT_BACKEND", broker_url)
check_sentinel({"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": result_backend})

task_serializer = TASK_SERIALIZER
result_serializer = RESULT_SERIALIZER
accept_content = CONTENT_TYPES
result_accept_content = CONTENT_TYPES

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# undecodable task messages fail their task instead of leaving its client waiting
worker_consumer = "tasks.consumer:Consumer"
# Let tasks running when the broker connection drops finish: their result is stored
# (the result backend retries), their ack is lost and the broker redelivers them
# after the visibility timeout (they are idempotent). Cancelling them instead stores
# a RETRY/REVOKED state against a backend that may be down: under Celery 5.6 that
# raised out of the consumer and killed the worker.
worker_cancel_long_running_tasks_on_connection_loss = False
task_soft_time_limit = _number("CELERY_TASK_SOFT_TIME_LIMIT", 30, float)
task_time_limit = _number("CELERY_TASK_TIME_LIMIT", 60, float)
result_expires = _number("CELERY_RESULT_EXPIRES", 600)

# Broker and result backend: reconnect forever, retry a result Redis could not take
# (a restart) instead of failing a task that succeeded, never wait on a dead or frozen
# Redis without a timeout (tasks/broker.py has the values; with sentinel:// URLs,
# also the primary's name).
_connection = connection_settings()
globals().update(_connection)
_visibility = _number("CELERY_VISIBILITY_TIMEOUT", 600)
broker_transport_options = {
    "visibility_timeout": _visibility,
    # look for tasks of dead workers every tenth of the timeout (kombu's default is 100 s)
    "unacked_restore_interval": max(1, _visibility // 10),
    "unacked_restore_throttle": 1,
    **_connection["broker_transport_options"],
}

vectorstore_url = os.environ.get("VECTORSTORE_URL") or None
vectorstore_model = os.environ.get("VECTORSTORE_MODEL") or None
vectorstore_prefix = os.environ.get("VECTORSTORE_PREFIX", "vs")
vectorstore_cache_bytes = default_cache_bytes()
vectorstore_refresh = _number("VECTORSTORE_REFRESH", 1.0, float)
vectorstore_prewarm = _number("VECTORSTORE_PREWARM", 1) > 0  # cache the top tokens before forking
vectorstore_prewarm_bytes = default_prewarm_bytes()
vectorstore_max_tokens = _number("VECTORSTORE_MAX_TOKENS", 10_000)
vectorstore_max_token_chars = _number("VECTORSTORE_MAX_TOKEN_CHARS", MAX_TOKEN_CHARS)
vectorstore_max_result_bytes = _number("VECTORSTORE_MAX_RESULT_BYTES", MAX_RESULT_BYTES)
vectorstore_task_retries = _number("VECTORSTORE_TASK_RETRIES", 3)
