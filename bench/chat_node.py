"""Chat node: how many chats one web process streams at once without falling behind.

A chat is sustained when the 99th percentile of the delay Tally adds to a text
event (simulator send to browser receive, both on this machine's monotonic clock)
stays under 100 ms, no reply fails, and the simulator still keeps its pace. The
baseline is the same count for bare SDK streams read by threads of one process.
The node figure does the same with one gunicorn worker per core against as many
bare reader processes.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.common import (
    SERVED,
    SETUPS,
    BenchError,
    Figure,
    Goal,
    WebServer,
    log,
    login,
)
from bench.wsclient import Crowd

NAME = "chat_node"
MAX_ADDED_MS = 100.0
# A simulator that sends its reply this much slower than asked is saturated.
MAX_PACE_SLIP = 1.25
SIZES = {
    "smoke": dict(
        tokens=20, delay_ms=10, start=1, limit=4, probes=0, idle=4, idle_seconds=1
    ),
    "quick": dict(
        tokens=100, delay_ms=20, start=20, limit=640, probes=1, idle=50, idle_seconds=5
    ),
    "full": dict(
        tokens=100,
        delay_ms=20,
        start=20,
        limit=1280,
        probes=2,
        idle=500,
        idle_seconds=8,
    ),
}
USERS = 20


@dataclass
class Level:
    """What ``chats`` concurrent replies looked like."""

    chats: int
    p50_ms: float
    p99_ms: float
    pace: float
    errors: int
    missing: int
    first_error: str = ""

    @property
    def sustained(self):
        return (
            self.p99_ms < MAX_ADDED_MS
            and self.pace <= MAX_PACE_SLIP
            and not self.errors
            and not self.missing
        )

    def __str__(self):
        verdict = "ok" if self.sustained else "FAIL"
        return (
            f"{self.chats} chats: added p50 {self.p50_ms:.1f} ms, p99 "
            f"{self.p99_ms:.1f} ms, pace x{self.pace:.2f}, {self.errors} errors, "
            f"{self.missing} events missing: {verdict}"
            + (f" ({self.first_error[:200]})" if self.first_error else "")
        )


def summarize(chats, delays, spans, errors, events_each, nominal_span):
    """A ``Level`` from every event's delay (ns) and each reply's send span (ns).

    ``errors`` lists what went wrong, one entry per failed reply.
    """
    delays = sorted(delays)
    expected = chats * events_each
    first = errors[0] if errors else ""
    if not delays:
        inf = float("inf")
        return Level(chats, 0.0, inf, inf, len(errors), expected, first)
    return Level(
        chats=chats,
        p50_ms=delays[len(delays) // 2] / 1e6,
        p99_ms=delays[min(len(delays) - 1, int(len(delays) * 0.99))] / 1e6,
        pace=statistics.median(spans) / nominal_span if nominal_span else 1.0,
        errors=len(errors),
        missing=expected - len(delays),
        first_error=first,
    )


def _span(stamps):
    return stamps[-1] - stamps[0] if len(stamps) > 1 else 0


class Load:
    """The reply every chat asks for: ``tokens`` text events ``delay_ms`` apart."""

    def __init__(self, tokens, delay_ms):
        self.tokens, self.delay_ms = tokens, delay_ms
        self.text = f"tokens:{tokens} delay:{delay_ms} benchmark"
        self.nominal_span = (tokens - 1) * delay_ms * 1e6
        # Staggered a little, as independent users are, yet all streaming at once.
        self.spread = min(1.0, tokens * delay_ms / 4000)

    def summarize(self, chats, delays, spans, errors):
        return summarize(chats, delays, spans, errors, self.tokens, self.nominal_span)


def tally_level(web, tokens, chats, load):
    crowd = Crowd(web.ws_url, [tokens[i % len(tokens)] for i in range(chats)])
    try:
        crowd.chat(load.text, spread=load.spread)
    finally:
        crowd.close()
    delays = [d for c in crowd.chats for d in c.delays]
    spans = [_span(c.stamps) for c in crowd.chats]
    errors = [e for c in crowd.chats for e in c.errors]
    errors += ["no end frame"] * sum(not c.ended_at for c in crowd.chats)
    return load.summarize(chats, delays, spans, errors)


def bare_level(sim_url, chats, load, env, processes=1):
    """``chats`` bare SDK streams, shared out over ``processes`` reader processes."""
    readers = []
    for n in range(processes):
        share = chats // processes + (n < chats % processes)
        if not share:
            continue
        args = [
            *(sys.executable, "-m", "bench.bare", "--url", sim_url),
            *("--streams", str(share), "--text", load.text),
            *("--spread", str(load.spread)),
        ]
        readers.append(
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    streams = []
    for reader in readers:
        out, err = reader.communicate()
        if reader.returncode:
            raise BenchError(f"bare reader failed: {err.decode()[-2000:]}")
        streams += json.loads(out)["streams"]
    delays = [d for s in streams for d in s["delays"]]
    spans = [_span(s["stamps"]) for s in streams]
    errors = [e for s in streams for e in s["errors"]]
    return load.summarize(chats, delays, spans, errors)


def ramp(measure, start, limit, probes, label):
    """The most chats ``measure`` sustains: double from ``start``, then bisect."""
    best, failed, chats = 0, None, start
    while chats <= limit:
        if not _probe(measure, chats, label):
            failed = chats
            break
        best, chats = chats, chats * 2
    for _ in range(probes):
        if failed is None or failed - best <= max(2, best // 10):
            break
        chats = (best + failed) // 2
        best, failed = (
            (chats, failed)
            if _probe(measure, chats, label)
            else (
                best,
                chats,
            )
        )
    return best


def around(measure, hint, limit, label, step=1.2, steps=2):
    """The most chats sustained, searched in ``step`` ratios from an earlier one."""
    if hint < 2:
        return ramp(measure, 1, limit, 2, label)
    chats = hint
    if _probe(measure, chats, label):
        for _ in range(steps):
            bigger = max(chats + 1, int(chats * step))
            if bigger > limit or not _probe(measure, bigger, label):
                return chats
            chats = bigger
        return chats
    for _ in range(steps):
        chats = max(1, int(chats / step))
        if _probe(measure, chats, label):
            return chats
    return 0


def _probe(measure, chats, label):
    """Whether ``chats`` are sustained; a failure counts only when it repeats.

    The machine is shared: one stall of another tenant's making fails a level
    on its own, and a search that believed it would stop far too low.
    """
    for _ in range(2):
        level = measure(chats)
        log("  %s: %s", label, level)
        if level.sustained:
            return True
    return False


def idle_cost(web, tokens, chats, seconds):
    """Per open, idle, signed-in chat socket: bytes of web-process RSS, and the
    web process's CPU microseconds per second over ``seconds``."""
    before = _settled_rss(web)
    crowd = Crowd(web.ws_url, [tokens[i % len(tokens)] for i in range(chats)])
    try:
        after = _settled_rss(web)
        cpu, started = web.cpu_seconds(), time.monotonic()
        time.sleep(seconds)  # the measuring window itself: idle sockets, no load
        cpu_rate = (web.cpu_seconds() - cpu) / (time.monotonic() - started)
    finally:
        crowd.close()
    return (after - before) / chats, cpu_rate / chats * 1e6


def _settled_rss(web, tries=20):
    """RSS once two readings 0.25 s apart agree within 1 %."""
    last = web.rss_bytes()
    for _ in range(tries):
        time.sleep(0.25)
        now = web.rss_bytes()
        if abs(now - last) <= last / 100:
            return now
        last = now
    return last


def setups(only=None, first_run=True):
    """The setups a run measures: the others, to compare, in the first run only."""
    wanted = SETUPS if first_run else (SERVED,)
    return [s for s in wanted if only is None or s in only]


def run(scratch, profile="full", runs=3, only_setups=None, node_workers=None):
    """Measure every server setup against bare SDK streams; return the figures.

    ``node_workers``: gunicorn workers of the served setup for the node figure
    (default one per core; 1 or fewer: no node figure). Setups other than the
    served one are measured in the first run only, to keep the suite short.
    """
    size = SIZES[profile]
    load = Load(size["tokens"], size["delay_ms"])
    sim = scratch.simulator()
    worker = scratch.worker()
    env = scratch.env()
    chosen = setups(only_setups)
    workers = os.cpu_count() if node_workers is None else node_workers
    bare, sustained, memory = [], {s: [] for s in chosen}, {s: [] for s in chosen}
    node = {"bare": [], "tally": []} if workers > 1 else None
    for n in range(runs):
        log("chat node run %d/%d", n + 1, runs)
        bare.append(
            _search(
                lambda k: bare_level(sim.url, k, load, env),
                bare[-1] if bare else None,
                size,
                "bare SDK",
            )
        )
        for setup in setups(only_setups, first_run=n == 0):
            hint = sustained[setup][-1] if sustained[setup] else None
            held, per_chat = _measure_setup(scratch, setup, sim, load, size, hint)
            sustained[setup].append(held)
            memory[setup].append(per_chat)
        if node is not None:
            _measure_node(scratch, sim, load, size, workers, node)
    scratch.stop(worker)
    scratch.stop(sim)
    return _figures(load, bare, sustained, memory, node, workers)


def _measure_node(scratch, sim, load, size, workers, node):
    """The node figure: ``workers`` served workers against as many bare readers."""
    env = scratch.env()
    node["bare"].append(
        _search(
            lambda k: bare_level(sim.url, k, load, env, processes=workers),
            node["bare"][-1] if node["bare"] else None,
            size,
            f"bare SDK x{workers}",
        )
    )
    hint = node["tally"][-1] if node["tally"] else None
    held, _ = _measure_setup(
        scratch, SERVED, sim, load, size, hint, workers=workers, memory=False
    )
    node["tally"].append(held)


def _search(measure, hint, size, label):
    """A full ramp the first time, then a search around the first answer."""
    if hint is None:
        return ramp(measure, size["start"], size["limit"], size["probes"], label)
    return around(measure, hint, size["limit"], label)


def _measure_setup(scratch, setup, sim, load, size, hint, workers=1, memory=True):
    """The most chats ``setup`` sustains, and (if ``memory``) RSS per idle chat."""
    web = WebServer(scratch, setup, sim.url, workers=workers)
    label = f"tally {setup}" + (f" x{workers}" if workers > 1 else "")
    try:
        tokens = [login(web.url, f"chat{i}") for i in range(USERS)]
        # The first calls of a fresh process open connections and fill caches.
        tally_level(web, tokens, 2 * workers, Load(20, 0))
        per_chat = (
            idle_cost(web, tokens, size["idle"], size["idle_seconds"])
            if memory
            else None
        )
        held = _search(lambda k: tally_level(web, tokens, k, load), hint, size, label)
    finally:
        scratch.stop(web.service)
    return held, per_chat


def _figures(load, bare, sustained, memory, node=None, workers=1):
    pace = f"{load.tokens} tokens, {load.delay_ms} ms apart"
    figures = []
    for setup, held in sustained.items():
        figures.append(
            Figure(
                NAME,
                f"chats sustained, 1 process, {setup}",
                "chats",
                held,
                baseline="bare SDK streams, 1 process",
                baseline_samples=bare,
                goal=Goal("ratio", ">=", 0.8),
                note=f"p99 added < {MAX_ADDED_MS:g} ms, {pace}",
            )
        )
    if node is not None:
        figures.append(
            Figure(
                NAME,
                f"chats sustained, 1 node: {workers} {SERVED} workers",
                "chats",
                node["tally"],
                baseline=f"bare SDK streams, {workers} processes",
                baseline_samples=node["bare"],
                goal=Goal("ratio", ">=", 0.8),
                note=f"p99 added < {MAX_ADDED_MS:g} ms, {pace}",
            )
        )
    for setup, per_chat in memory.items():
        figures.append(
            Figure(
                NAME,
                f"web CPU per idle open chat, {setup}",
                "us/s",
                [cpu for _, cpu in per_chat],
                note="signed-in sockets, no chat",
            )
        )
    for setup, per_chat in memory.items():
        figures.append(
            Figure(
                NAME,
                f"memory per open chat, {setup}",
                "KiB",
                _kib([rss for rss, _ in per_chat]),
            )
        )
    return figures


def _kib(values):
    return [v / 1024 for v in values]
