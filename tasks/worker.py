"""The Celery app and its tasks; run with ``celery -A tasks worker --autoscale=8,2``.

Task names are fixed, so any service can send them by name with JSON
arguments; results are msgpack dicts (see :mod:`tasks.results`)::

    tasks.vectorize_document(tokens, model=None, max_len=None, oov=None,
                             dtype="float32", normalize=False)
    tasks.vectorize_documents(docs, model=None, max_len=None, oov=None,
                              dtype="float32", normalize=False)
    tasks.embed_document(tokens, model=None, weights=None, pre_normalize=True,
                         post_normalize=False, ignore_missing=True, dtype="float32")

Each pool process opens one :class:`RedisKeyedVectors` per model name on first
use (nothing is loaded when a process starts, so autoscaling forks are ready
at once) and holds only a connection, metadata and a bounded cache; the store
picks up a model reload within ``VECTORSTORE_REFRESH`` seconds. Bad requests
fail at once with a :mod:`tasks.errors` exception and are not retried; an
unreachable store is retried ``VECTORSTORE_TASK_RETRIES`` times with
exponential backoff, then fails with ``StoreUnavailableError``.

After each task a pool process writes its stores' ``kv.stats()`` counters to
shared memory; the worker's main process reports them, summed per model and per
process, under ``"vectorstore"`` in ``celery inspect stats`` (and Flower), see
:mod:`tasks.stats`.

>>> from tasks import app, as_array                                        # doctest: +SKIP
>>> r = app.send_task("tasks.vectorize_document", [["fast", "car"]])        # doctest: +SKIP
>>> as_array(r.get()).shape                                                # doctest: +SKIP
(2, 300)
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import numpy as np
from celery import Celery, signals

from vectorstore import ModelNotFoundError, RedisKeyedVectors, StoreUnavailableError

from . import stats as pool_stats
from .errors import TaskInputError, UnknownModelError
from .results import check_size, pack
from .validate import (
    Options,
    check_document,
    check_documents,
    check_flag,
    check_model,
    check_options,
    check_weights,
    default_oov,
)
from .vectorize import mean_vector, vectorize

logger = logging.getLogger(__name__)
app = Celery("tasks")
app.config_from_object("celeryconfig")
app.steps["worker"].add(pool_stats.PoolStatsStep)

_stores: dict[str, RedisKeyedVectors] = {}
_stores_lock = threading.Lock()


PREWARM_RETRY = 30.0  # seconds before a failed prewarm is tried again at the next fork
_prewarmed: int | None = None  # version of the default model the pool's cache holds
_prewarm_failed = -float("inf")  # when prewarming last failed (time.monotonic)


@signals.worker_before_create_process.connect
def _prewarm_default_model(**_: Any) -> None:
    """In the worker's main process, before it forks each pool process: when the default
    model's version is not the one prewarmed (the first fork, and the first after a
    reload), fill its cache with its most frequent tokens, so every pool process,
    including one the autoscaler forks later, starts warm and shares those pages
    copy-on-write (``VECTORSTORE_PREWARM=0`` turns it off); every time, close the main
    process's connections (no child may share its sockets) and keep the garbage collector
    off those pages (as ``_share_imports_with_pool``). A missing model or an unreachable
    Redis only logs a warning (tried again after :data:`PREWARM_RETRY` seconds): the pool
    processes then fill their caches as they go. (Not at ``worker_init``: logging is
    not set up yet then.)"""
    global _prewarmed, _prewarm_failed
    conf = app.conf
    if (conf.vectorstore_prewarm and conf.vectorstore_model
            and time.monotonic() - _prewarm_failed > PREWARM_RETRY):
        try:
            kv = store(conf.vectorstore_model)  # reads the alias at most once a refresh period
            version = kv.version
            if version != _prewarmed:
                n = kv.prewarm(max_bytes=conf.vectorstore_prewarm_bytes)
                _prewarmed = version
                logger.info("prewarmed %d vectors of model %r version %d for the pool",
                            n, kv.name, version)
        except Exception as exc:  # noqa: BLE001  # a worker must start without its cache
            _prewarm_failed = time.monotonic()
            logger.warning("cache not prewarmed (%s: %s)", type(exc).__name__, exc)
    for kv in _stores.values():
        kv.close()
    gc.freeze()


@signals.worker_before_create_process.connect
def _slot_for_next_process(**_: Any) -> None:
    """In the main process, before each fork: the new process's slot for its counters."""
    pool_stats.before_fork()


@signals.task_postrun.connect
def _publish_counters(**_: Any) -> None:
    """After each task: this process's counters, for the main process's ``inspect stats``."""
    pool_stats.publish(dict(_stores))


@signals.worker_init.connect
def _share_imports_with_pool(**_: Any) -> None:
    """Before the pool forks: put every object the imports made out of the garbage
    collector's reach. A collection in a pool process would otherwise write to all
    their pages and copy them: measured ~44 MiB private memory per pool process
    without this, ~15 MiB with it."""
    gc.freeze()


def store(model: Any) -> RedisKeyedVectors:
    """This process's store of ``model`` (default ``VECTORSTORE_MODEL``), opened on first use.

    Raises UnknownModelError if no such model is loaded.
    """
    conf = app.conf
    name = check_model(model, conf.vectorstore_model)
    with _stores_lock:
        kv = _stores.get(name)
        if kv is None:
            kv = _stores[name] = RedisKeyedVectors(
                name, conf.vectorstore_url, prefix=conf.vectorstore_prefix,
                cache_bytes=conf.vectorstore_cache_bytes, refresh=conf.vectorstore_refresh)
    try:
        _ = kv.vector_size  # reads the model's alias and metadata (once per refresh period)
    except ModelNotFoundError as exc:
        with _stores_lock:
            _stores.pop(name, None)
        raise UnknownModelError(str(exc)) from None
    return kv


_TASK_OPTIONS: dict[str, Any] = dict(
    autoretry_for=(StoreUnavailableError,),
    max_retries=app.conf.vectorstore_task_retries,
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    throws=(TaskInputError,),  # expected failures: logged without a traceback
    resultrepr_maxsize=120,  # the worker log shows results' raw bytes as hex
)


def _options(max_len: Any, oov: Any, dtype: Any, normalize: Any) -> Options:
    """Checked options; ``oov`` None stays None until :func:`default_oov` knows the model."""
    return check_options(max_len, oov, dtype, normalize, app.conf.vectorstore_max_tokens)


@app.task(name="tasks.vectorize_document", **_TASK_OPTIONS)
def vectorize_document(tokens: list[str], model: str | None = None,
                       max_len: int | None = None, oov: str | None = None,
                       dtype: str = "float32", normalize: bool = False) -> dict[str, Any]:
    """The (n, dim) matrix of ``tokens``, or (max_len, dim) cut or zero-padded.

    ``oov`` (tokens outside the vocabulary): ``"zero"`` rows, ``"skip"`` (leave
    out), ``"error"``, or ``"subword"`` (fastText models loaded from their
    ``.bin``: the mean of the token's n-gram vectors, as gensim). The default,
    None, is ``"subword"`` for such a model and ``"zero"`` for any other.
    ``normalize`` makes each row unit-length (zero rows stay zero).
    """
    conf = app.conf
    tokens = check_document(tokens, conf.vectorstore_max_tokens,
                            max_chars=conf.vectorstore_max_token_chars)
    opts = _options(max_len, oov, dtype, normalize)
    kv = store(model)
    opts = default_oov(opts, kv.subwords is not None)
    shape = (opts.max_len or len(tokens), kv.vector_size)
    check_size(shape, opts.dtype, conf.vectorstore_max_result_bytes)
    [(matrix, missing)] = vectorize(kv, [tokens], opts)
    oov_tokens = [tokens[i] for i in missing]
    check_size(shape, opts.dtype, conf.vectorstore_max_result_bytes, oov=oov_tokens)
    return pack(matrix.astype(opts.dtype), missing, oov_tokens, kv.name, kv.version)


@app.task(name="tasks.vectorize_documents", **_TASK_OPTIONS)
def vectorize_documents(docs: list[list[str]], model: str | None = None,
                        max_len: int | None = None, oov: str | None = None,
                        dtype: str = "float32", normalize: bool = False) -> Any:
    """``vectorize_document`` for a batch, with one store lookup of all unique tokens.

    Returns a list of per-document results, or with ``max_len`` one result of
    shape (batch, max_len, dim) whose ``missing``/``oov`` are lists per document.
    """
    docs = check_documents(docs, app.conf.vectorstore_max_tokens,
                           max_chars=app.conf.vectorstore_max_token_chars)
    opts = _options(max_len, oov, dtype, normalize)
    kv = store(model)
    opts = default_oov(opts, kv.subwords is not None)
    dim, limit = kv.vector_size, app.conf.vectorstore_max_result_bytes
    shape = ((sum(map(len, docs)), dim) if opts.max_len is None
             else (len(docs), opts.max_len, dim))
    check_size(shape, opts.dtype, limit, "batch result")
    results = vectorize(kv, docs, opts)
    version = kv.version
    oovs = [[doc[i] for i in missing] for doc, (_, missing) in zip(docs, results)]
    check_size(shape, opts.dtype, limit, "batch result", oov=oovs)
    if opts.max_len is not None:
        tensor = np.stack([m for m, _ in results]).astype(opts.dtype)
        return pack(tensor, [missing for _, missing in results], oovs, kv.name, version)
    return [pack(m.astype(opts.dtype), missing, o, kv.name, version)
            for (m, missing), o in zip(results, oovs)]


@app.task(name="tasks.embed_document", **_TASK_OPTIONS)
def embed_document(tokens: list[str], model: str | None = None,
                   weights: list[float] | None = None, pre_normalize: bool = True,
                   post_normalize: bool = False, ignore_missing: bool = True,
                   dtype: str = "float32") -> dict[str, Any]:
    """The (dim,) weighted mean vector of ``tokens``, as gensim's ``get_mean_vector``."""
    tokens = check_document(tokens, app.conf.vectorstore_max_tokens,
                            max_chars=app.conf.vectorstore_max_token_chars)
    w = check_weights(weights, len(tokens))
    opts = _options(None, "zero", dtype, False)
    flags = [check_flag(n, v) for n, v in (("pre_normalize", pre_normalize),
                                            ("post_normalize", post_normalize),
                                            ("ignore_missing", ignore_missing))]
    kv = store(model)
    mean, missing = mean_vector(kv, tokens, w, *flags)
    oov_tokens = [tokens[i] for i in missing]
    check_size(mean.shape, opts.dtype, app.conf.vectorstore_max_result_bytes, oov=oov_tokens)
    return pack(mean.astype(opts.dtype), missing, oov_tokens, kv.name, kv.version)
