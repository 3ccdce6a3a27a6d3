"""The ``vectorstore`` command: load, list, inspect, verify and drop models; run a Redis.

Every command takes ``--url`` (also accepted before the command name); the
default comes from ``VECTORSTORE_URL``, then ``REDIS_URL``, then
``redis://localhost:6379/0``. Passwords are never printed. Expected failures
print one line on stderr and exit with code 2; ``verify`` exits with 1 when
the stored model does not match its metadata.

Examples::

    vectorstore server --port 6390 &
    export VECTORSTORE_URL=redis://127.0.0.1:6390/0
    vectorstore load GoogleNews-vectors-negative300.bin.gz --name news
    vectorstore list
    vectorstore info news
    vectorstore index news --quantization q8
    vectorstore verify news
    vectorstore drop news --yes            # on a terminal, without --yes, it asks
"""
from __future__ import annotations

import datetime
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis

from . import loader
from .codec import DTYPES
from .connection import Timeouts, redact, resolve_url, safe_message
from .errors import VectorStoreError
from .index import (
    DEFAULT_EF,
    DEFAULT_M,
    DEFAULT_QUANTIZATION,
    DEFAULT_WORKERS,
    EF_RANGE,
    M_RANGE,
    QUANTIZATIONS,
    IndexOptions,
    IndexStatus,
    build_index,
    index_memory,
    read_status,
)
from .keys import Keys, check_name
from .readers import FORMATS
from .server import SENTINEL_MASTER, EmbeddedCluster, EmbeddedRedis, EmbeddedReplicaSet
from .topology import deployment

_URL = "vectorstore.url"


class _Group(click.Group):
    """Turns expected errors into one line on stderr and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VectorStoreError as exc:
            _fail(str(exc))
        except redis.TimeoutError as exc:
            t = Timeouts.from_env()
            _fail(f"Redis at {_where(ctx)} did not answer in time ({_safe(exc, ctx)}; "
                  f"VECTORSTORE_CONNECT_TIMEOUT={t.connect:g} s, "
                  f"VECTORSTORE_SOCKET_TIMEOUT={t.socket:g} s)")
        except redis.ConnectionError as exc:
            _fail(f"cannot reach Redis at {_where(ctx)}: {_safe(exc, ctx)}")
        except redis.RedisError as exc:
            _fail(f"Redis error: {_safe(exc, ctx)}")


def _where(ctx: click.Context) -> str:
    return redact(ctx.meta.get(_URL) or _url(ctx))


def _safe(exc: Exception, ctx: click.Context) -> str:
    """``exc``'s message, unless it could show part of the password (then its type)."""
    return safe_message(str(exc), ctx.meta.get(_URL) or _url(ctx)) or type(exc).__name__


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(2)


def _url(ctx: click.Context) -> str:
    """The URL of the innermost ``--url`` given, else of the environment (remembered
    in ``ctx.meta``, which all contexts of a command line share, for error messages)."""
    given: click.Context | None = ctx
    while given is not None and not given.params.get("url"):
        given = given.parent
    ctx.meta[_URL] = resolve_url(given.params["url"] if given is not None else None)
    return ctx.meta[_URL]


def _url_option(f: Callable) -> Callable:
    return click.option("--url", metavar="URL", help="Redis URL (default: $VECTORSTORE_URL, "
                        "$REDIS_URL, redis://localhost:6379/0).")(f)


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _size(n: float) -> str:
    """``n`` bytes for humans: ``"3.6 GiB"``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _quantization_option(f: Callable) -> Callable:
    return click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)),
                        default=DEFAULT_QUANTIZATION, show_default=True,
                        help="Index vectors as int8 (q8), float32 (noquant) or bits (bin).")(f)


def _index_line(status: IndexStatus, memory: int | None) -> str:
    """``ready (q8 m=16 ef=200), 1.7 MiB (991 B/vector), built at 2,345 vectors/s``."""
    text = status.describe()
    if status.ready and memory:
        text += (f", {_size(memory)} ({memory / max(status.total, 1):.0f} B/vector), "
                 f"built at {status.rate:,.0f} vectors/s")
    return text


def _index_state(url: str, name: str, version: int) -> str:
    keys = Keys(name)
    with deployment(url) as d:
        return _index_line(read_status(d.client.execute_command, keys, version),
                           index_memory(d.client.execute_command, keys, version))


@click.group(name="vectorstore", cls=_Group)
@_url_option
def main(url: str | None) -> None:
    """Word vectors in Redis, served to workers through a gensim KeyedVectors API."""


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, callback=_name, help="Model name to load as.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="File format; auto detects it from the content.")
@click.option("--limit", type=click.IntRange(min=1), help="Load only the first N vectors.")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float32",
              show_default=True, help="Stored float type; float16 halves the memory.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Vectors per Redis write.")
@click.option("--index", "with_index", is_flag=True,
              help="Also build the similarity index, before the new version replaces the "
                   "served one, so similarity calls work from the moment it is served.")
@_quantization_option
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@_url_option
@click.pass_context
def load(ctx: click.Context, path: Path, name: str, fmt: str, limit: int | None, dtype: str,
         batch_size: int, with_index: bool, quantization: str, no_progress: bool,
         url: str | None) -> None:
    """Load the vector file PATH (.gz/.bz2 too) as model NAME, replacing it atomically."""
    url = _url(ctx)
    meta = loader.load(path, name, url=url, fmt=fmt, limit=limit, dtype=dtype,
                       batch_size=batch_size, progress=not no_progress,
                       index=IndexOptions(quantization) if with_index else None)
    took = float(meta.extra["load_seconds"])
    click.echo(f"loaded {name} version {meta.version}: {meta.count} vectors x {meta.dim} "
               f"{meta.dtype} ({meta.extra['format']}) in {took:.1f} s "
               f"({meta.count / max(took, 1e-6):,.0f}/s) into {redact(url)}")
    if with_index:
        click.echo(f"index of {name} version {meta.version}: "
                   f"{_index_state(url, name, meta.version)}")


@main.command(name="list")
@_url_option
@click.pass_context
def list_(ctx: click.Context, url: str | None) -> None:
    """List the loaded models."""
    url = _url(ctx)
    names = loader.list_models(url=url)
    if not names:
        click.echo(f"no models at {redact(url)}", err=True)
    for name in names:
        m = loader.info(name, url=url)
        click.echo(f"{name}\tversion {m.meta.version}\t{m.meta.count} x {m.meta.dim} "
                   f"{m.meta.dtype}\t{_size(m.bytes_used)}\t{m.meta.source}")


@main.command()
@click.argument("name", callback=_name)
@_url_option
@click.pass_context
def info(ctx: click.Context, name: str, url: str | None) -> None:
    """Show the metadata and memory use of model NAME."""
    url = _url(ctx)
    m = loader.info(name, url=url)
    created = datetime.datetime.fromtimestamp(m.meta.created_at).isoformat(timespec="seconds")
    others = [str(v) for v in m.versions if v != m.meta.version]
    lines = {
        "name": name,
        "version": m.meta.version,
        "dim": m.meta.dim,
        "count": m.meta.count,
        "dtype": m.meta.dtype,
        "format": m.meta.extra.get("format", ""),
        "source": m.meta.source,
        "created": created,
        "load time": f"{float(m.meta.extra.get('load_seconds', 'nan')):.1f} s",
        "checksum": m.meta.checksum,
        "other versions": ", ".join(others) or "none",
        "memory": f"{_size(m.bytes_used)} (estimate)",
        "index": _index_state(url, name, m.meta.version),
        "loading": m.loading or "no",
    }
    for key, value in lines.items():
        click.echo(f"{key + ':':16}{value}")


@main.command()
@click.argument("name", callback=_name)
@_quantization_option
@click.option("--m", "m", type=click.IntRange(*M_RANGE), default=DEFAULT_M, show_default=True,
              help="HNSW links per vector: more is better recall and more memory.")
@click.option("--ef", type=click.IntRange(*EF_RANGE), default=DEFAULT_EF, show_default=True,
              help="Exploration factor while inserting: more is a better graph, slower.")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS,
              show_default=True, help="Connections inserting at once into each shard "
                                      "(VADD ... CAS).")
@click.option("--shards", type=click.IntRange(min=1),
              help="Vector sets to split the index into, each on its own node where there "
                   "are enough  [default: one per master on a cluster, 1 on one server]")
@click.option("--force", is_flag=True, help="Rebuild even if such an index is ready.")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@_url_option
@click.pass_context
def index(ctx: click.Context, name: str, quantization: str, m: int, ef: int, workers: int,
          shards: int | None, force: bool, no_progress: bool, url: str | None) -> None:
    """Build the similarity index (a Redis 8 vector set) of model NAME's served version.

    Lookups keep working meanwhile; an interrupted build resumes when run again. On a
    Redis Cluster the index is split into shards, one per master, built at once.
    """
    url = _url(ctx)
    status = build_index(name, url=url, quantization=quantization, m=m, ef=ef,
                         workers=workers, shards=shards, force=force, progress=not no_progress)
    click.echo(f"index of {name} version {status.version}: "
               f"{_index_state(url, name, status.version)}")


@main.command()
@click.argument("name", callback=_name)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a "
              "terminal).")
@_url_option
@click.pass_context
def drop(ctx: click.Context, name: str, yes: bool, url: str | None) -> None:
    """Delete model NAME and all its versions (asks first on a terminal)."""
    url = _url(ctx)
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():
            _fail(f"not dropping {name}: there is no terminal to confirm on; pass --yes")
        click.confirm(f"Drop model {name} and all its versions from {redact(url)}?", abort=True,
                      err=True)
    deleted = loader.drop(name, url=url)
    click.echo(f"dropped {name} ({deleted} keys) from {redact(url)}")


@main.command()
@click.argument("name", callback=_name)
@_url_option
@click.pass_context
def verify(ctx: click.Context, name: str, url: str | None) -> None:
    """Check model NAME against its metadata (count, checksum); exit 1 on mismatch."""
    result = loader.verify(name, url=_url(ctx))
    if result.ok:
        click.echo(f"{name} version {result.version}: ok ({result.found_count} vectors, "
                   f"checksum {result.found_checksum[:16]})")
        return
    click.echo(f"{name} version {result.version}: MISMATCH", err=True)
    click.echo(f"  count:    expected {result.expected_count}, found {result.found_count}",
               err=True)
    click.echo(f"  checksum: expected {result.expected_checksum[:16]}, "
               f"found {result.found_checksum[:16]}", err=True)
    for problem in result.problems:
        click.echo(f"  {problem}", err=True)
    raise click.exceptions.Exit(1)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="TCP port on 127.0.0.1 "
              "(default: a free one).")
@click.option("--unix-socket", type=click.Path(dir_okay=False), help="Listen on this unix "
              "socket instead of TCP.")
@click.option("--cluster", "masters", type=click.IntRange(min=1), help="Run a Redis Cluster "
              "of this many masters (with --replicas replicas each, default 1); print a seed "
              "node's URL.")
@click.option("--replicas", type=click.IntRange(min=0), help="Replicas per master with "
              "--cluster; without it, run a primary with this many replicas and print the "
              "primary's URL, then 'replica <URL>' lines.")
@click.option("--sentinels", type=click.IntRange(min=1), help="With --replicas (no --cluster): "
              f"also run this many Redis Sentinels watching the primary as "
              f"'{SENTINEL_MASTER}'; print a 'sentinel <URL>' line (kombu/Celery form).")
def server(port: int | None, unix_socket: str | None, masters: int | None,
           replicas: int | None, sentinels: int | None) -> None:
    """Run a local Redis (without persistence) until Ctrl-C or SIGTERM; print its URL.

    With --cluster or --replicas, several servers on free loopback ports. A node that
    dies (e.g. a kill -9 to try a failover) is reported and the others keep running.
    """
    if port and unix_socket:
        raise click.UsageError("give --port or --unix-socket, not both")
    if (masters or replicas is not None) and (port or unix_socket):
        raise click.UsageError("--port and --unix-socket are for a single server, "
                               "not with --cluster or --replicas")
    if sentinels and (masters or replicas is None):
        raise click.UsageError("--sentinels needs --replicas, without --cluster")
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    group: EmbeddedRedis | EmbeddedCluster | EmbeddedReplicaSet
    if masters:
        group = EmbeddedCluster(masters, 1 if replicas is None else replicas)
    elif replicas is not None:
        group = EmbeddedReplicaSet(replicas, sentinels or 0, master_name=SENTINEL_MASTER)
    else:
        group = EmbeddedRedis(port=port, unix_socket=unix_socket)
    try:
        group.start()
        if isinstance(group, EmbeddedCluster):
            nodes: list[EmbeddedRedis] = group.nodes
            click.echo(group.url)
            click.echo(f"Redis Cluster of {group.shape[0]} masters with {group.shape[1]} "
                       f"replicas each: {', '.join(group.urls)}", err=True)
        elif isinstance(group, EmbeddedReplicaSet):
            nodes = [*group.nodes, *group.sentinels]
            click.echo(group.url)
            for url in group.replica_urls:
                click.echo(f"replica {url}")
            if sentinels:
                click.echo(f"sentinel {group.sentinel_url()}")
                click.echo(f"Sentinel master name: {SENTINEL_MASTER}", err=True)
        else:
            nodes = [group]
            click.echo(redact(group.url))
        _watch(nodes, stop)
    finally:
        group.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    click.echo("stopped", err=True)


def _watch(nodes: list[EmbeddedRedis], stop: threading.Event) -> None:
    """Return when ``stop`` is set; say on stderr when a node exits; fail when all have."""
    gone: set[int] = set()
    while not stop.wait(0.2):
        for i, node in enumerate(nodes):
            if i not in gone and not node.alive():
                gone.add(i)
                assert node.process is not None
                if len(nodes) == 1:
                    _fail(f"redis-server exited with code {node.process.returncode}")
                click.echo(f"{node.url} exited with code {node.process.returncode}", err=True)
        if len(gone) == len(nodes):
            _fail("every server exited")


if __name__ == "__main__":
    main()
