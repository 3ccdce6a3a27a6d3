"""Redis connections: where to connect, how long to wait, what to retry, without leaking passwords.

The URL comes from the argument, else ``VECTORSTORE_URL``, else ``REDIS_URL``,
else ``redis://localhost:6379/0``. ``redis://``, ``rediss://`` (TLS),
``unix://``, ``user:password@`` and ``?password=`` all work, as in redis-py.
Special characters in a password must be percent-encoded (``@`` as ``%40``,
``/`` as ``%2F``, ``?`` as ``%3F``, ``#`` as ``%23``, ``%`` as ``%25``): a URL
that redis-py would misread is refused with a clear error. No function here
ever returns or raises a message that holds any part of a password.

Timeouts, in seconds, from the environment (read when a client is made):

* ``VECTORSTORE_CONNECT_TIMEOUT`` (2): TCP connect to Redis.
* ``VECTORSTORE_SOCKET_TIMEOUT`` (5): each reply (and send) on an open connection.
* ``VECTORSTORE_SLOW_TIMEOUT`` (120): a reply to a call known to be slow (an exact
  ``VSIM ... TRUTH`` over millions of vectors takes seconds).
* ``VECTORSTORE_HEALTH_CHECK_INTERVAL`` (30): PING a connection idle this long
  before using it (0: never); the Redis user needs ``+ping``.

Connection errors (refused, reset, Redis still loading its data) are retried
``RETRIES`` = 5 times, sleeping 0.1, 0.2, 0.4, 0.8 and 1.6 s in between (3.1 s in
all), so a restart of up to ~3 s goes unnoticed; a wrong password is not retried. A timeout is not retried: a
Redis that did not answer within the timeout is stalled, and asking again at
once only multiplies the wait (a Celery task retries later instead). So a
stalled (frozen) Redis fails a call after one socket timeout (5 s), or one
connect timeout (2 s) if it no longer accepts connections; a stopped one after
the 3.1 s of back-off. The hard bound, if every attempt broke by a connection
error just before its timeout, is ``(RETRIES + 1) * (connect + socket) + 3.1``
= 45.1 s with the defaults (:func:`worst_case`).

>>> redact("redis://worker:s3cret@db:6379/0")
'redis://worker:***@db:6379/0'
>>> redact("unix:///tmp/r.sock?password=s3cret&db=2")
'unix:///tmp/r.sock?password=***&db=2'
>>> redact("redis://u:a@b/c@db:6379/0")  # even unescaped
'redis://u:***@db:6379/0'
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import VectorStoreError

DEFAULT_URL = "redis://localhost:6379/0"
RETRIES = 5
BACKOFF_BASE = 0.05  # seconds; the n-th retry sleeps min(BACKOFF_CAP, BACKOFF_BASE * 2**n)
BACKOFF_CAP = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for Redis; see the module docstring for the variables.

    >>> Timeouts.from_env({"VECTORSTORE_SOCKET_TIMEOUT": "1.5"}).socket
    1.5
    """

    connect: float = 2.0
    socket: float = 5.0
    slow: float = 120.0
    health_check: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timeouts:
        """The defaults, overridden by ``VECTORSTORE_*_TIMEOUT`` / ``..._INTERVAL`` variables."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(connect=_seconds(env, "VECTORSTORE_CONNECT_TIMEOUT", default.connect),
                   socket=_seconds(env, "VECTORSTORE_SOCKET_TIMEOUT", default.socket),
                   slow=_seconds(env, "VECTORSTORE_SLOW_TIMEOUT", default.slow),
                   health_check=_seconds(env, "VECTORSTORE_HEALTH_CHECK_INTERVAL",
                                         default.health_check, zero=True))


def _seconds(env: Mapping[str, str], name: str, default: float, zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise VectorStoreError(f"{name}={raw!r} is not a number of seconds "
                               f"{'>= 0' if zero else '> 0'}")
    return value


def backoff_total(retries: int = RETRIES) -> float:
    """Seconds slept between the attempts of one call that fails every time (3.1 s)."""
    return sum(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** n) for n in range(1, retries + 1))


def worst_case(timeouts: Timeouts | None = None, retries: int = RETRIES) -> float:
    """Upper bound, in seconds, of one call that fails: every attempt waits its full
    connect and socket timeouts before a connection error, plus the back-off.

    >>> round(worst_case(Timeouts()), 1)
    45.1
    """
    t = timeouts or Timeouts.from_env()
    return (retries + 1) * (t.connect + t.socket) + backoff_total(retries)


def resolve_url(url: str | None = None) -> str:
    """The Redis URL to use: ``url``, or the environment, or the default."""
    return url or os.environ.get("VECTORSTORE_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


# --- passwords ----------------------------------------------------------------------

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"(?<=[?&])password=", re.IGNORECASE)
_NEXT_PARAM = re.compile(r"&[A-Za-z_][A-Za-z0-9_-]*=")
_PIECES = re.compile(r"[/?#@:&=\s]+")


def _query_spans(url: str) -> list[tuple[int, int]]:
    """Index ranges of ``password=`` query values: to the next ``&name=``, or the end."""
    spans = []
    for match in _QUERY_PASSWORD.finditer(url):
        after = _NEXT_PARAM.search(url, match.end())
        spans.append((match.end(), after.start() if after else len(url)))
    return spans


def _userinfo_span(url: str) -> tuple[int, int] | None:
    """Index range of the userinfo password: from the first ``:`` after ``scheme://``
    to the *last* ``@`` (so a raw ``@``, ``/`` or ``?`` in it stays inside)."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at >= 0 else -1
    return (colon + 1, at) if colon >= 0 else None


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Index ranges of ``url`` that may hold a password, merged and sorted. Raw special
    characters make a URL ambiguous, so the spans cover every reading."""
    userinfo = _userinfo_span(url)
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(_query_spans(url) + ([userinfo] if userinfo else [])):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def redact(url: str) -> str:
    """``url`` with anything that may be a password replaced by ``***``."""
    out, last = [], 0
    for lo, hi in _secret_spans(url):
        out += [url[last:lo], "***"]
        last = hi
    return "".join(out) + url[last:]


def _secret_pieces(url: str) -> set[str]:
    """Every fragment of the password(s) in ``url`` that a parser might print."""
    pieces: set[str] = set()
    for lo, hi in _secret_spans(url):
        for text in (url[lo:hi], unquote(url[lo:hi])):
            pieces.update(p for p in _PIECES.split(text) if p)
    return pieces


def safe_message(text: str, url: str) -> str | None:
    """``text`` (an error message about ``url``) with the URL redacted, or None if it
    still holds a fragment of the password (a misread URL can put one in a host name)."""
    text = text.replace(url, redact(url))
    return None if any(piece in text for piece in _secret_pieces(url)) else text


def check_url(url: str) -> None:
    """Raise VectorStoreError for a URL that redis-py would read differently than written:
    a ``#``, or a ``/`` or ``?`` in the password, left unescaped."""
    hint = "percent-encode it in the password ('/' as %2F, '?' as %3F, '#' as %23, '@' as %40)"
    if "#" in url:
        raise VectorStoreError(f"Redis URL {redact(url)} holds a '#': {hint}")
    userinfo, scheme = _userinfo_span(url), _SCHEME.match(url)
    if userinfo is None or scheme is None:
        return
    at = userinfo[1]
    if any(lo <= at < hi for lo, hi in _query_spans(url)):
        return  # the '@' is in a ?password= value
    try:
        netloc_end = scheme.end() + len(urlsplit(url).netloc)
    except ValueError:
        return  # from_url reports it
    if at >= netloc_end:
        raise VectorStoreError(f"Redis URL {redact(url)}: its user or password holds a '/' "
                               f"or '?': {hint}")


# --- clients ------------------------------------------------------------------------


class _GiveUp(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _Retry(Retry):
    """:class:`~redis.retry.Retry` that gives up at once on a refused login: redis-py's
    AuthenticationError is a ConnectionError, but asking again cannot fix a password."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any], *args: Any,
                        **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except redis.AuthenticationError as exc:
                raise _GiveUp(exc) from exc

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _GiveUp as give_up:
            raise give_up.error from None


def connect(url: str | None = None, retries: int | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` with this module's timeouts and retries.

    Connections open lazily on first use; redis-py's pool re-creates its
    connections after a fork, so a client made before Celery forks is safe.
    ``retries`` defaults to ``RETRIES``; ``kwargs`` go to ``redis.Redis.from_url``
    and override the defaults.

    Raises:
        VectorStoreError: the URL is malformed (the message shows no password), or
            a timeout variable is not a positive number.
    """
    url = resolve_url(url)
    check_url(url)
    t = Timeouts.from_env()
    options: dict[str, Any] = {
        # only connection errors: a timeout means a stalled server (see the module doc)
        "retry": _Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE),
                        RETRIES if retries is None else retries,
                        supported_errors=(redis.ConnectionError,)),
        "socket_connect_timeout": t.connect,
        "socket_timeout": t.socket,
        "health_check_interval": t.health_check,
        "socket_read_size": 256 * 1024,  # a 100-token 300-d document is ~120 kB
        **kwargs,
    }
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        reason = safe_message(str(exc), url) or "it cannot be parsed"
        raise VectorStoreError(f"invalid Redis URL {redact(url)}: {reason}") from None
