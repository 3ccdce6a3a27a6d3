"""The pool processes' ``kv.stats()`` counters, in the worker's ``celery inspect stats``.

Celery answers ``inspect stats`` (and Flower shows it) from the worker's main
process, while the stores and their counters live in the pool processes. Before
the pool forks, the main process maps a small block of shared memory with one
fixed-size slot per pool process (numbers and model names only, never pickle);
the slot is handed to the next process forked, which writes its counters there
after each task (a few microseconds). The worker's :class:`PoolStatsStep` adds
their sums per model, and each live process's own, to the stats reply::

    $ celery -A tasks inspect stats
    -> w1@host: OK
        {
            ...
            "vectorstore": {
                "processes": 2,
                "models": {"news": {"lookups": 812, "tokens": 81200, "hits": 78010,
                                    "hit_rate": 0.961, "fetched": 3120, "absent": 70,
                                    "round_trips": 402, "bytes": 3744000, ...}},
                "per_process": [{"pid": 4242, "models": {"news": {...}}}, ...]}}

The counters (``lookups`` ... ``cache_evicted``) count since the worker started,
including processes that have exited since (autoscaling down, max tasks per
child); the cache gauges (``cache_entries``, ``cache_capacity``,
``cache_pinned``, ``cache_fill``) are the live processes'. ``kv.stats()``
documents each field.

>>> from tasks.client import client_app                              # doctest: +SKIP
>>> stats = client_app().control.inspect(timeout=1).stats()          # doctest: +SKIP
>>> stats["w1@host"]["vectorstore"]["models"]["news"]["hit_rate"]    # doctest: +SKIP
0.961
"""
from __future__ import annotations

import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from celery import bootsteps

from vectorstore import RedisKeyedVectors

logger = logging.getLogger(__name__)

#: Summed over every process the worker ran, kept when a process exits.
COUNTERS = ("lookups", "tokens", "hits", "fetched", "absent", "round_trips", "bytes",
            "cache_admitted", "cache_evicted")
#: The live processes' caches, summed.
GAUGES = ("cache_entries", "cache_capacity", "cache_pinned")
FIELDS = COUNTERS + GAUGES
#: Models one process reports by name; beyond them, the rest are summed under OTHERS.
MODELS = 8
OTHERS = "(other models)"  # not a valid model name, so never a model's
#: Seconds a slot handed to a fork stays reserved if the process never writes its pid.
RESERVED = 60.0

_SLOT = np.dtype([("seq", "<u8"), ("pid", "<i8"), ("names", "S128", (MODELS,)),
                  ("values", "<i8", (MODELS, len(FIELDS)))])
_IS_COUNTER = np.array([f in COUNTERS for f in FIELDS])
_ZERO = np.zeros(len(FIELDS), np.int64)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: trust the signal check


def _as_dict(values: np.ndarray) -> dict[str, int | float]:
    out: dict[str, int | float] = dict(zip(FIELDS, map(int, values)))
    out["hit_rate"] = round(out["hits"] / out["tokens"], 4) if out["tokens"] else 0.0
    out["cache_fill"] = (round(out["cache_entries"] / out["cache_capacity"], 4)
                         if out["cache_capacity"] else 0.0)
    return out


class PoolCounters:
    """Shared-memory slots, one per process, made by the worker's main process.

    The main process hands slots out (:meth:`assign`) and reads them
    (:meth:`report`); a process writes only its own (:meth:`write`), bracketed by a
    sequence number so a reader never sums a half-written slot. A slot whose
    process has exited is folded into the worker's totals and handed out again.

    >>> table = PoolCounters(4)
    >>> table.claim(table.assign(), os.getpid())
    >>> table.write(0, {"m": np.arange(len(FIELDS))})
    >>> table.report()["models"]["m"]["hits"]
    2
    """

    def __init__(self, slots: int) -> None:
        self.owner = os.getpid()
        self._map = mmap.mmap(-1, slots * _SLOT.itemsize)  # anonymous, shared with forks
        self._slots = np.frombuffer(self._map, _SLOT)
        self._lock = threading.Lock()  # the main process: the autoscaler's thread forks too
        self._assigned: dict[int, float] = {}  # slot -> when handed to a fork not yet seen
        self._exited: dict[str, np.ndarray] = {}  # model -> counters of exited processes
        self._warned = False

    def assign(self) -> int | None:
        """In the main process: a free slot for the next process, or None if all are taken."""
        with self._lock:
            self._sweep()
            taken = set(self._assigned) | set(np.flatnonzero(self._slots["pid"]).tolist())
            free = next((i for i in range(len(self._slots)) if i not in taken), None)
            if free is None:
                if not self._warned:
                    self._warned = True
                    logger.warning("%d pool processes already report counters: the next ones' "
                                   "are left out of inspect stats", len(self._slots))
                return None
            self._assigned[free] = time.monotonic()
            return free

    def claim(self, slot: int | None, pid: int) -> None:
        """In the process given ``slot``: mark it as ``pid``'s."""
        if slot is not None:
            self._slots["pid"][slot] = pid

    def write(self, slot: int, values: Mapping[str, np.ndarray]) -> None:
        """In the slot's process: its per-model values (``FIELDS`` order) replace the slot's."""
        names = list(values)
        rows = np.zeros((MODELS, len(FIELDS)), "<i8")
        labels = np.zeros(MODELS, "S128")
        for i, name in enumerate(names[:MODELS]):
            labels[i], rows[i] = name.encode(), values[name]
        if len(names) > MODELS:
            labels[-1] = OTHERS.encode()
            rows[-1] = np.sum([values[n] for n in names[MODELS - 1:]], axis=0)
        seq = self._slots["seq"]
        seq[slot] += 1  # odd: being written
        self._slots["names"][slot] = labels
        self._slots["values"][slot] = rows
        seq[slot] += 1

    def report(self) -> dict[str, Any]:
        """In the main process: ``{"processes", "models", "per_process"}`` (module docstring)."""
        with self._lock:
            self._sweep()
            totals = {name: v.copy() for name, v in self._exited.items()}
            per_process = []
            for slot in np.flatnonzero(self._slots["pid"] > 0).tolist():
                pid, entries = self._read(slot)
                per_process.append({"pid": pid, "models": {n: _as_dict(v) for n, v in entries.items()}})
                for name, values in entries.items():
                    totals[name] = totals.get(name, _ZERO) + values
        return {"processes": len(per_process),
                "models": {name: _as_dict(v) for name, v in sorted(totals.items())},
                "per_process": per_process}

    def _read(self, slot: int, tries: int = 1000) -> tuple[int, dict[str, np.ndarray]]:
        """A copy of ``slot``, retried while its process is writing it (for at most ~0.1 s:
        a process killed while writing leaves it half-written)."""
        for _ in range(tries):
            before = int(self._slots["seq"][slot])
            pid = int(self._slots["pid"][slot])
            names = self._slots["names"][slot].copy()
            values = self._slots["values"][slot].copy()
            if before % 2 == 0 and int(self._slots["seq"][slot]) == before:
                break
            time.sleep(0.0001)
        return pid, {n.decode(): v for n, v in zip(names, values) if n}

    def _sweep(self) -> None:
        """Fold the slots of exited processes into the totals and free them (lock held)."""
        now = time.monotonic()
        for slot, since in list(self._assigned.items()):
            if self._slots["pid"][slot] or now - since > RESERVED:
                del self._assigned[slot]  # seen, or its fork failed or died at once
        for slot in np.flatnonzero(self._slots["pid"] > 0).tolist():
            pid = int(self._slots["pid"][slot])
            if pid == self.owner or _alive(pid):
                continue
            for name, values in self._read(slot, tries=1)[1].items():
                self._exited[name] = self._exited.get(name, _ZERO) + values * _IS_COUNTER
            self._slots[slot] = np.zeros((), _SLOT)


_table: PoolCounters | None = None
_next = threading.local()  # the slot for the process this thread forks next
_slot: int | None = None  # this process's slot
# per model: (the handle last written, its values then); counters of handles since dropped
_last: dict[str, tuple[weakref.ref[RedisKeyedVectors], np.ndarray]] = {}
_dropped: dict[str, np.ndarray] = {}
_publish_lock = threading.Lock()


def before_fork() -> None:
    """In the worker's main process, before it forks a pool process: pick its slot."""
    _next.slot = _table.assign() if _table is not None else None


def _after_fork_in_child() -> None:
    global _slot
    slot, _next.slot = getattr(_next, "slot", None), None
    _last.clear()
    _dropped.clear()
    _slot = slot
    if _table is not None:
        _table.claim(slot, os.getpid())


def _after_fork_in_parent() -> None:
    _next.slot = None


os.register_at_fork(after_in_child=_after_fork_in_child, after_in_parent=_after_fork_in_parent)


def publish(stores: Mapping[str, RedisKeyedVectors]) -> None:
    """In the process that ran a task: write its stores' counters to its slot.

    A handle dropped or replaced (its model was missing) keeps counting in the totals.
    """
    global _slot
    if _table is None:
        return
    if _slot is None and os.getpid() == _table.owner:  # solo or threads pool: tasks run here
        _slot = _table.assign()
        _table.claim(_slot, os.getpid())
    if _slot is None:
        return
    with _publish_lock:  # a threads pool runs tasks side by side
        for name in [n for n, (ref, _) in _last.items() if stores.get(n) is not ref()]:
            _dropped[name] = _dropped.get(name, _ZERO) + _last.pop(name)[1] * _IS_COUNTER
        for name, kv in stores.items():
            stats = kv.stats()
            _last[name] = weakref.ref(kv), np.array([stats[f] for f in FIELDS], np.int64)
        _table.write(_slot, {n: _dropped.get(n, _ZERO) + (_last[n][1] if n in _last else _ZERO)
                             for n in dict.fromkeys([*_dropped, *_last])})


class PoolStatsStep(bootsteps.StartStopStep):
    """Worker bootstep: maps the slots before the pool starts, reports them in ``inspect stats``.

    Added with ``app.steps["worker"].add(PoolStatsStep)``.
    """

    label = "vectorstore counters"

    def create(self, parent: Any) -> None:
        """Runs in the main process while the worker is built, before any pool process forks."""
        global _table
        most = parent.max_concurrency or parent.concurrency or 1
        _table = PoolCounters(max(64, 4 * most))  # room for autoscale raised at run time

    def info(self, parent: Any) -> dict[str, Any]:
        return {"vectorstore": _table.report()} if _table is not None else {}
