"""Figure 8: one Redis, a 3-master Redis Cluster and a primary with 2 read replicas, side by side.

All three run at once (:mod:`vectorstore.server`: ``EmbeddedRedis``,
``EmbeddedCluster(3, 1)``, ``EmbeddedReplicaSet(2)``) and hold the same
synthetic model, loaded with the project's loader. Client processes, each with
its own ``RedisKeyedVectors(cache_bytes=0)`` handle on every topology (the
replica set's with ``VECTORSTORE_READ_FROM=replicas`` and
``VECTORSTORE_REPLICA_URLS``), look up 100-token documents for a fixed time;
topologies and client counts are interleaved over rounds and the best round
counts. Measured alongside: the CPU seconds every server and client spent per
document (``INFO cpu``, ``time.process_time``), which say what one node or N
nodes would serve on hosts of their own, each node's ``used_memory``, and a
single client's latency per document, round-robin over the topologies.

>>> run(ctx)                      # doctest: +SKIP  (python -m benchmarks --only cluster)
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from vectorstore import RedisKeyedVectors
from vectorstore.index import build_index
from vectorstore.loader import load
from vectorstore.server import EmbeddedCluster, EmbeddedRedis, EmbeddedReplicaSet

from .config import Context
from .data import Streams
from .measure import fmt_bytes, pct
from .report import figure

DOC_LEN = 100
ONE, CLUSTER, REPLICAS = "1 node", "3-master cluster", "primary + 2 replicas"
NIC_BYTES = 10e9 / 8  # a 10 Gb/s link, for the on-paper bound


@dataclass(frozen=True)
class Sizes:
    vocab: int
    clients: tuple[int, ...]
    seconds: float  # per burst
    rounds: int
    latency_docs: int


SIZES = {
    "smoke": Sizes(2000, (1, 2), 0.3, 1, 10),
    "quick": Sizes(100_000, (1, 2, 4, 8, 16), 1.5, 1, 200),
    "full": Sizes(100_000, (1, 2, 4, 8, 16), 3.5, 3, 1000),
}


@dataclass
class Topology:
    """One deployment under test: its URL, the client settings, and its servers by role."""

    name: str
    url: str
    env: dict[str, str]
    nodes: list[tuple[str, EmbeddedRedis]] = field(default_factory=list)
    docs: int = 0  # documents done in all bursts
    client_cpu: float = 0.0  # client CPU seconds in all bursts
    server_cpu: dict[str, float] = field(default_factory=dict)  # node URL -> CPU seconds
    idle: dict[str, float] = field(default_factory=dict)  # node URL -> CPU seconds per second

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + sys) each node has used since it started."""
        out = {}
        for _, node in self.nodes:
            with node.client() as c:
                info = c.info("cpu")
            out[node.url] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return out

    def add_cpu(self, before: dict[str, float], seconds: float) -> None:
        """Add each node's CPU since ``before``, less its idle use over ``seconds``."""
        for url, used in self.cpu().items():
            busy = used - before[url] - self.idle.get(url, 0.0) * seconds
            self.server_cpu[url] = self.server_cpu.get(url, 0.0) + busy

    def per_doc(self, role: str) -> float:
        """Server CPU seconds per document of the nodes that have ``role``."""
        return sum(self.server_cpu.get(node.url, 0.0) for r, node in self.nodes
                   if r == role) / max(self.docs, 1)


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _handle(model: str, topo: Topology, doc: list[str]) -> RedisKeyedVectors:
    """A cache-off handle on ``topo``, connected now with its settings (read at connect)."""
    with _environ(topo.env):
        kv = RedisKeyedVectors(model, url=topo.url, cache_bytes=0)
        kv[doc]
    return kv


def _client(conn: Connection, model: str, topos: list[Topology], docs: list[list[str]],
            first: int) -> None:
    """A client process: on ``(topology, start, seconds)`` look up documents from wall time
    ``start`` for ``seconds``; replies ``(documents, CPU seconds, latencies)``."""
    handles = {t.name: _handle(model, t, docs[0]) for t in topos}
    conn.send("ready")
    i = first
    while (order := conn.recv()) is not None:
        name, start, seconds = order
        kv, end, lat = handles[name], start + seconds, []
        time.sleep(max(0.0, start - time.time()))
        cpu = time.process_time()
        while (t0 := time.time()) < end:
            doc = docs[i % len(docs)]
            if kv[doc].shape != (DOC_LEN, kv.vector_size):
                raise AssertionError(f"{name}: a document's matrix has the wrong shape")
            t1 = time.time()
            if t1 <= end:
                lat.append(t1 - t0)
            i += 1
        conn.send((len(lat), time.process_time() - cpu, lat))


class Clients:
    """``n`` client processes (forked), each holding a handle on every topology."""

    def __init__(self, n: int, model: str, topos: list[Topology], docs: list[list[str]]) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs = []
        for k in range(n):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_client, args=(there, model, topos, docs,
                                                     k * len(docs) // n), daemon=True)
            proc.start()
            self.conns.append(here)
            self.procs.append(proc)
        for here in self.conns:
            if not here.poll(60) or here.recv() != "ready":
                raise RuntimeError("a benchmark client process did not start")

    def burst(self, topo: Topology, n: int, seconds: float) -> tuple[float, list[float]]:
        """``n`` clients on ``topo`` for ``seconds``: docs/s and every document's latency."""
        before, t0 = topo.cpu(), time.monotonic()
        start = time.time() + 0.2
        for here in self.conns[:n]:
            here.send((topo.name, start, seconds))
        docs, latencies = 0, []
        for here in self.conns[:n]:
            if not here.poll(seconds + 60):
                raise RuntimeError(f"a client on {topo.name} did not answer")
            done, cpu, lat = here.recv()
            docs += done
            topo.client_cpu += cpu
            latencies += lat
        topo.docs += docs
        topo.add_cpu(before, time.monotonic() - t0)
        return docs / seconds, latencies

    def close(self) -> None:
        for here in self.conns:
            here.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _wait_replicated(nodes: list[tuple[str, EmbeddedRedis]], timeout: float = 60.0) -> None:
    """Wait until every master's replicas acknowledge its replication offset of now."""
    deadline = time.monotonic() + timeout
    for role, node in nodes:
        if role != "master":
            continue
        with node.client() as c:
            reply = c.execute_command("ROLE")
            offset = int(reply[1])
            while any(int(r[2]) < offset for r in reply[2]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replicas of {node.url} did not catch up: {reply}")
                time.sleep(0.2)
                reply = c.execute_command("ROLE")


def _roles(nodes: list[EmbeddedRedis]) -> list[tuple[str, EmbeddedRedis]]:
    out = []
    for node in nodes:
        with node.client() as c:
            out.append(("master" if c.execute_command("ROLE")[0] == "master" else "replica",
                        node))
    return out


def _memory(topo: Topology) -> list[tuple[str, str, int, int]]:
    """(node, role, keys, used_memory) of each node."""
    rows = []
    for role, node in topo.nodes:
        with node.client() as c:
            rows.append((node.url.split("//")[1].rsplit("/", 1)[0], role, int(c.dbsize()),
                         int(c.info("memory")["used_memory"])))
    return rows


def run(ctx: Context) -> None:
    p, size = ctx.profile, SIZES[ctx.profile.name]
    sec = ctx.report.section("8. Redis Cluster and read replicas")
    m = ctx.model(size.vocab)
    streams = Streams(m.tokens)
    docs = streams.documents("uniform", 400, DOC_LEN, seed=8)
    timed = streams.documents("uniform", size.latency_docs, DOC_LEN, seed=88)
    expected = m.load(mmap="r")
    load_avg = os.getloadavg()
    with ExitStack() as stack:
        one = stack.enter_context(EmbeddedRedis())
        cluster = stack.enter_context(EmbeddedCluster(3, 1))
        rs = stack.enter_context(EmbeddedReplicaSet(2))
        topos = [
            Topology(ONE, one.url, {"VECTORSTORE_READ_FROM": "primary"}, [("master", one)]),
            Topology(CLUSTER, cluster.url, {"VECTORSTORE_READ_FROM": "primary"},
                     _roles(cluster.nodes)),
            Topology(REPLICAS, rs.url, {"VECTORSTORE_READ_FROM": "replicas",
                                        "VECTORSTORE_REPLICA_URLS": ",".join(rs.replica_urls)},
                     _roles(rs.nodes)),
        ]
        empty = {t.name: _memory(t) for t in topos}
        loads: dict[str, float] = {}
        for t in topos:
            t0 = time.monotonic()
            load(str(m.bin_path), m.name, url=t.url, progress=False)
            loads[t.name] = m.count / (time.monotonic() - t0)
            _wait_replicated(t.nodes)
        memory = {t.name: _memory(t) for t in topos}

        # One client, one document at a time, round-robin over the topologies.
        handles = {t.name: _handle(m.name, t, timed[0]) for t in topos}
        trips0 = {name: kv.stats()["round_trips"] for name, kv in handles.items()}
        floor = one.client()
        single: dict[str, list[float]] = {name: [] for name in [t.name for t in topos] + ["PING"]}
        for i, doc in enumerate(timed):
            want = expected[doc]
            names = list(single)
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                got = floor.ping() if name == "PING" else handles[name][doc]
                single[name].append(time.perf_counter() - t0)
                if name != "PING" and not np.array_equal(got, want):
                    raise AssertionError(f"{name} returned other vectors than gensim")
        trips = {name: (kv.stats()["round_trips"] - trips0[name]) / len(timed)
                 for name, kv in handles.items()}
        for kv in handles.values():
            kv.close()
        floor.close()

        clients = Clients(max(size.clients), m.name, topos, docs)
        try:
            for t in topos:  # untimed: every connection used once, pages touched
                clients.burst(t, max(size.clients), min(size.seconds, 0.5))
            before, t0 = [t.cpu() for t in topos], time.monotonic()
            time.sleep(min(2.0, size.seconds))  # what the servers use idle (cluster bus, cron)
            for t, cpu in zip(topos, before):
                t.server_cpu = {}
                t.add_cpu(cpu, 0.0)
                t.idle = {u: s / (time.monotonic() - t0) for u, s in t.server_cpu.items()}
                t.docs, t.client_cpu, t.server_cpu = 0, 0.0, {}
            calls0 = {t.name: _mget_calls(t) for t in topos}
            rates: dict[tuple[str, int], list[float]] = {}
            loaded: dict[tuple[str, int], list[float]] = {}
            for r in range(size.rounds):
                for k, n in enumerate(size.clients if r % 2 == 0 else size.clients[::-1]):
                    order = topos[k % 3:] + topos[:k % 3]
                    for t in order:
                        rate, lat = clients.burst(t, n, size.seconds)
                        if rate >= max(rates.get((t.name, n), [0.0])):
                            loaded[(t.name, n)] = lat
                        rates.setdefault((t.name, n), []).append(rate)
        finally:
            clients.close()
        mgets = {t.name: {u: n - calls0[t.name][u] for u, n in _mget_calls(t).items()}
                 for t in topos}  # during the timed bursts
        builds = {t.name: _build(m.name, m.count, t) for t in topos[:2]}  # replicas: as 1 node

    best = {key: max(v) for key, v in rates.items()}
    _write(sec, p.dim, m.count, size, topos, best, loaded, single, trips, memory, empty, mgets,
           load_avg)
    _write_builds(sec, m.count, loads, builds)


def _build(model: str, count: int, topo: Topology) -> tuple[int, float, float]:
    """Build ``model``'s default q8 index on ``topo``: (shards, vectors/s, Redis CPU s)."""
    before, t0 = topo.cpu(), time.monotonic()
    status = build_index(model, url=topo.url, progress=False)
    took = time.monotonic() - t0
    cpu = sum(topo.cpu().values()) - sum(before.values())
    return len(status.keys), count / took, cpu


def _write_builds(sec: Any, count: int, loads: dict[str, float],
                  builds: dict[str, tuple[int, float, float]]) -> None:
    """Load and index-build rates per topology (the issue's build rate against node count)."""
    sec.text(f"Writing the {count:,}-vector model into each topology (the loader, from the "
             f"word2vec binary; on the cluster one MSETNX per token group, every master's at "
             f"once), and building its default q8 similarity index (`build_index`: one vector "
             f"set per master on the cluster, all built at once), after the bursts above. "
             f"Redis CPU is summed over the topology's nodes, replicas included.")
    rows: list[list[object]] = []
    for name, rate in loads.items():
        shards, built, cpu = builds.get(name, (0, 0.0, 0.0))
        rows.append([name, f"{rate:,.0f}",
                     f"{built:,.0f} ({shards} vector set{'s' if shards != 1 else ''})"
                     if shards else "as 1 node (the index is built on the primary)",
                     f"{cpu:.1f}" if shards else "-"])
    sec.table(["topology", "load, vectors/s", "index build, vectors/s", "Redis CPU s of the build"],
              rows)
    one, cluster = builds[ONE][1], builds[CLUSTER][1]
    sec.text(f"The cluster built its index at {cluster / one:.2f}x one node's rate on these "
             f"shared cores: its shards are smaller graphs (an insert searches a third of "
             f"the elements) built at once; with a host per master each shard's inserts would "
             f"also have CPUs of their own.")


def _mget_calls(topo: Topology) -> dict[str, int]:
    """MGET commands each node served (``INFO commandstats``)."""
    out = {}
    for _, node in topo.nodes:
        with node.client() as c:
            out[node.url] = int(c.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    return out


def _write(sec: Any, dim: int, count: int, size: Sizes, topos: list[Topology],
           best: dict[tuple[str, int], float], loaded: dict[tuple[str, int], list[float]],
           single: dict[str, list[float]], trips: dict[str, float],
           memory: dict[str, list[tuple[str, str, int, int]]],
           empty: dict[str, list[tuple[str, str, int, int]]], mgets: dict[str, dict[str, int]],
           load_avg: tuple[float, float, float]) -> None:
    names = [t.name for t in topos]
    reply = DOC_LEN * 4 * dim
    sec.text(
        f"Model {count:,} x {dim} float32 in each topology; documents of {DOC_LEN} uniform "
        f"tokens (a ~{reply / 1e3:.0f} KB reply each); handles with the cache off, so every "
        f"document goes to Redis. Client processes ran {size.seconds:g} s bursts, topologies "
        f"and client counts interleaved over {size.rounds} round(s), best round shown. The "
        f"cluster's clients read from its masters; the replica set's from its replicas "
        f"(`VECTORSTORE_READ_FROM=replicas`, each client process on one of the two). Every "
        f"server and client shared this machine's {os.cpu_count()} cores (load average "
        f"{load_avg[0]:.1f} before the run, other work included). Tokens (lookups) per "
        f"second are {DOC_LEN}x documents per second.")
    rows = []
    for n in size.clients:
        row: list[object] = [n]
        for name in names:
            rate, lat = best[(name, n)], loaded[(name, n)]
            cell = f"{rate:,.0f} docs/s, {rate * DOC_LEN / 1e3:,.0f}k tokens/s, p50 " \
                   f"{pct(lat, 50) * 1e3:.2f} ms"
            if name != ONE:
                cell += f" ({rate / best[(ONE, n)]:.2f}x 1 node)"
            row.append(cell)
        rows.append(row)
    sec.table(["client processes"] + names, rows)

    base = pct(single[ONE], 50)
    sec.text("One client, one document at a time, the topologies round-robin per document "
             f"({len(single[ONE])} documents each, every matrix checked equal to gensim's):")
    sec.table(["topology", "p50 ms", "p95 ms", "p50 vs 1 node", "round trips per document"],
              [[name, f"{pct(v, 50) * 1e3:.3f}", f"{pct(v, 95) * 1e3:.3f}",
                f"{pct(v, 50) / base:.2f}x", f"{trips[name]:.2f}" if name in trips else "-"]
               for name, v in single.items()])

    rows = []
    for t in topos:
        roles = {node.url: role for role, node in t.nodes}
        by_replicas = sum(c for u, c in mgets[t.name].items() if roles[u] == "replica")
        cells = [f"{max(0.0, t.per_doc(role)) * 1e3:.3f}"
                 if any(r == role for r, _ in t.nodes) else "-" for role in ("master", "replica")]
        calls = sum(mgets[t.name].values())
        rows.append([t.name, f"{t.client_cpu / t.docs * 1e3:.3f}", *cells,
                     f"{sum(t.idle.values()):.1%}", f"{calls / t.docs:.2f}",
                     f"{by_replicas / max(calls, 1):.0%}", f"{t.docs:,}"])
    sec.text("CPU per document over all timed bursts (servers: `INFO cpu` of every node, user "
             "+ sys, less what the nodes use idle, measured before the bursts; clients: their "
             "own CPU time):")
    sec.table(["topology", "clients CPU ms/doc", "masters CPU ms/doc", "replicas CPU ms/doc",
               "idle servers (of one core)", "MGETs per document", "MGETs served by replicas",
               "documents"], rows)

    rows = []
    for name in names:
        before = {node: used for node, _, _, used in empty[name]}
        rows += [[name, node, role, f"{keys:,}", fmt_bytes(used), fmt_bytes(used - before[node])]
                 for node, role, keys, used in memory[name]]
    sec.text("Memory of each node after the load (`used_memory`; the model's share is the "
             "growth from the empty node):")
    sec.table(["topology", "node", "role", "keys", "used_memory", "added by the model"], rows)

    fig, axes = figure(ncols=3, width=4.6)
    ax = axes[0][0]
    for name in names:
        ax.plot(size.clients, [best[(name, n)] for n in size.clients], marker="o", label=name)
    ax.set(xscale="log", xlabel="client processes", ylabel="docs/s",
           title=f"{DOC_LEN}-token documents, cache off")
    ax.set_xticks(size.clients)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    labels = list(single)
    ax.bar(labels, [pct(single[k], 50) * 1e3 for k in labels], label="p50",
           color=[f"C{i}" if k != "PING" else "grey" for i, k in enumerate(labels)])
    ax.plot(labels, [pct(single[k], 95) * 1e3 for k in labels], "k_", markersize=20, label="p95")
    ax.set(ylabel="ms", title="one client, one document")
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    ax.legend(fontsize=7)
    ax = axes[0][2]
    x = 0
    for i, name in enumerate(names):
        for node, role, _, used in memory[name]:
            ax.bar(x, used / 2**20, color=f"C{i}", hatch="" if role == "master" else "//",
                   label=name if node == memory[name][0][0] else None)
            x += 1
        x += 1
    ax.set(ylabel="MiB", xticks=[], title="used_memory per node (hatched: replica)")
    ax.legend(fontsize=7)
    sec.plot(fig, "fig8_cluster", "throughput, latency and memory per topology")

    sec.goal("a document on the 3-master cluster is one exchange: every node's pipeline "
             "sent before any reply is read (round trips per document, one client; the alias "
             "is re-read once a second)", trips[CLUSTER] <= 1.05, f"{trips[CLUSTER]:.3f}")
    r = pct(single[CLUSTER], 50) / base
    sec.goal("a document on the 3-master cluster takes about one node's time: p50 at most "
             "1.5x one node (one client)", r <= 1.5, f"{r:.2f}x")
    _bounds(sec, size, topos, best, memory, reply,
            sum(mgets[CLUSTER].values()) / next(t.docs for t in topos if t.name == CLUSTER))


def _bounds(sec: Any, size: Sizes, topos: list[Topology], best: dict[tuple[str, int], float],
            memory: dict[str, list[tuple[str, str, int, int]]], reply: int,
            cluster_mgets: float) -> None:
    """What bounds each figure here, and what one node or N nodes would serve on real hosts."""
    cores = os.cpu_count() or 1
    by = {t.name: t for t in topos}
    peak = {t.name: max(best[(t.name, n)] for n in size.clients) for t in topos}
    ceiling = {t.name: cores / ((t.client_cpu + sum(t.server_cpu.values())) / t.docs)
               for t in topos}
    node = by[ONE].per_doc("master")  # one standalone node, whole document
    masters = by[CLUSTER].per_doc("master")  # all masters of the cluster, whole document
    replica = by[REPLICAS].per_doc("replica")  # the replicas, whole document
    worker = best[(ONE, 1)]  # one process doing nothing but lookups
    nic = NIC_BYTES / reply
    sec.text(
        f"What bounds these figures: every server and every client shares {cores} cores, so "
        "throughput stops near cores / (client + server CPU per document): "
        + "; ".join(f"{name} {ceiling[name]:,.0f} docs/s predicted, {peak[name]:,.0f} "
                    "measured at best" for name in ceiling)
        + ". More client processes than cores only queue (latency grows, throughput does "
        "not), and more servers add CPU work per document, never cores: the cluster and the "
        "replicas cannot show their scaling on this machine. Per document, the cluster's "
        f"masters spend {masters / node:.2f}x one node's CPU and its clients "
        f"{by[CLUSTER].client_cpu / by[CLUSTER].docs / (by[ONE].client_cpu / by[ONE].docs):.2f}x "
        f"its clients' ({cluster_mgets:.2f} MGETs per document, one per master holding some of "
        "its tokens, sent together and stitched back in order).")
    sec.text(
        "On paper, for hosts with a core per Redis server and workers on hosts of their own, "
        f"from the CPU costs above: one standalone node spends {node * 1e3:.3f} ms per "
        f"{DOC_LEN}-token document, so it serves about {1 / node:,.0f} docs/s "
        f"({DOC_LEN / node / 1e6:.1f}M tokens/s); its ~{reply / 1e3:.0f} KB per document caps "
        f"a 10 Gb/s link at {nic:,.0f} docs/s. One process doing nothing but lookups (cache "
        f"off) did {worker:,.0f} docs/s here, so one node serves about "
        f"{min(1 / node, nic) / worker:,.1f} such processes; a Celery process doing one "
        "`vectorize_document` task per document does several times fewer (figure 6), and "
        "with the prewarmed cache most Zipf tokens never reach Redis, so one node serves "
        f"that many times more worker processes. A cluster's masters spend {masters * 1e3:.3f} "
        f"ms per document between them, so N masters serve about N x {1 / masters:,.0f} "
        f"docs/s (N x {1 / masters / worker:,.1f} lookup-only processes; "
        f"{node / masters:.2f}x a standalone node per master) and each holds and sends 1/N of "
        f"the model (a document still costs one MGET per master, so this holds while N is "
        f"small next to a document's {DOC_LEN} tokens). Read replicas spend "
        f"{replica * 1e3:.3f} ms per document ({replica / node:.2f}x one node), so R replicas "
        f"serve about R x {1 / replica:,.0f} docs/s, each with its own link, and leave the "
        f"primary to the loader.")
    mem = {name: sum(u for _, _, _, u in rows) for name, rows in memory.items()}
    sec.text(
        "Memory: the cluster splits the model's keys over its masters (each holds a third; "
        "each replica a copy of its master's third), so per-node memory falls as 1/N while "
        "the whole cluster holds 2 copies with one replica per master; the replica set holds "
        "a full copy on every node. Total used_memory: "
        + ", ".join(f"{name} {fmt_bytes(v)}" for name, v in mem.items()) + ".")
