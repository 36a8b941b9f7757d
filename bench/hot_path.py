"""Hot path: the web process's own CPU per streamed event and per finished call.

The baseline is a process that reads the same replies with the bare SDK and does
nothing else. CPU time, not wall time: the figure must not depend on how busy the
machine is. Last, the reply must not wait for the broker: end-frame latency with
a broker that accepts connections and never answers, against a working one.
"""

import json
import socket
import subprocess
import sys

from bench.common import (
    SERVED,
    BenchError,
    Figure,
    Goal,
    WebServer,
    free_port,
    log,
    login,
)
from bench.wsclient import Crowd

NAME = "hot_path"
SIZES = {
    "smoke": dict(chats=2, long_tokens=50, long_rounds=1, short_rounds=3, latency=3),
    "quick": dict(chats=4, long_tokens=500, long_rounds=2, short_rounds=15, latency=15),
    "full": dict(chats=4, long_tokens=500, long_rounds=3, short_rounds=25, latency=30),
}
# Paced 1 ms apart, so that events arrive one by one as Claude sends them.
LONG = "tokens:{tokens} delay:1 hot path"
SHORT = "tokens:1 hot path"
QUICK_REPLY = "tokens:20 end frame"


def tally_cpu(web, tokens, text, rounds):
    """Web-process CPU seconds for ``rounds`` replies on each chat, and the count."""
    crowd = Crowd(web.ws_url, tokens)
    try:
        before = web.cpu_seconds()
        for _ in range(rounds):
            crowd.chat(text)
        spent = web.cpu_seconds() - before
    finally:
        crowd.close()
    errors = [e for c in crowd.chats for e in c.errors]
    if errors:
        raise BenchError(f"hot path chat failed: {errors[0]}")
    events = sum(len(c.delays) for c in crowd.chats)
    return spent, events


def bare_cpu(sim_url, streams, text, rounds, env, raw=False):
    """CPU seconds of a bare SDK process reading the same replies, and the count."""
    args = [
        *(sys.executable, "-m", "bench.bare", "--url", sim_url),
        *("--streams", str(streams), "--text", text, "--rounds", str(rounds)),
        *(["--raw"] if raw else []),
    ]
    done = subprocess.run(args, env=env, capture_output=True, check=False)
    if done.returncode:
        raise BenchError(f"bare reader failed: {done.stderr.decode()[-2000:]}")
    figures = json.loads(done.stdout)
    events = sum(len(s["delays"]) for s in figures["streams"])
    if any(s["errors"] for s in figures["streams"]):
        raise BenchError(f"bare reader errors: {figures['streams'][0]['errors']}")
    return figures["cpu_seconds"], events


def end_frame_ms(web, token, rounds):
    """Median milliseconds from sending a chat frame to its end frame."""
    crowd = Crowd(web.ws_url, [token])
    times = []
    try:
        for _ in range(rounds):
            crowd.chat(QUICK_REPLY)
            chat = crowd.chats[0]
            if chat.errors or not chat.ended_at:
                raise BenchError(f"end-frame chat failed: {chat.errors}")
            times.append((chat.ended_at - chat.sent_at) / 1e6)
    finally:
        crowd.close()
    times.sort()
    return times[len(times) // 2]


class HungBroker:
    """A port that accepts connections and never answers: a broker stuck hard."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", self.port))
        # Never accept(): the kernel completes the handshake, nobody replies.
        self.sock.listen(64)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self):
        self.sock.close()


def run(scratch, profile="full", runs=3, setup=SERVED):
    """CPU per event and per call against the bare SDK; enqueue latency check."""
    size = SIZES[profile]
    sim = scratch.simulator()
    worker = scratch.worker()
    samples = {k: [] for k in ("event", "bare_event", "raw_event", "call", "bare_call")}
    latency = {"up": [], "hung": []}
    try:
        for n in range(runs):
            log("hot path run %d/%d", n + 1, runs)
            _cpu_round(scratch, sim, size, setup, samples)
            _latency_round(scratch, sim, size, setup, latency)
    finally:
        scratch.stop(worker)
        scratch.stop(sim)
    return _figures(size, setup, samples, latency)


def _cpu_round(scratch, sim, size, setup, samples):
    chats, env = size["chats"], scratch.env()
    long_text = LONG.format(tokens=size["long_tokens"])
    long_calls = chats * size["long_rounds"]
    short_calls = chats * size["short_rounds"]
    web = WebServer(scratch, setup, sim.url)
    try:
        tokens = [login(web.url, f"hot{i}") for i in range(chats)]
        long_cpu, events = tally_cpu(web, tokens, long_text, size["long_rounds"])
        short_cpu, _ = tally_cpu(web, tokens, SHORT, size["short_rounds"])
    finally:
        scratch.stop(web.service)
    per_call = short_cpu / short_calls
    samples["call"].append(per_call * 1e3)
    samples["event"].append(per_event(long_cpu, long_calls, per_call, events))
    cpu, _ = bare_cpu(sim.url, chats, SHORT, size["short_rounds"], env)
    bare_call = cpu / short_calls
    samples["bare_call"].append(bare_call * 1e3)
    cpu, events = bare_cpu(sim.url, chats, long_text, size["long_rounds"], env)
    samples["bare_event"].append(per_event(cpu, long_calls, bare_call, events))
    cpu, events = bare_cpu(sim.url, chats, long_text, size["long_rounds"], env, True)
    samples["raw_event"].append(per_event(cpu, long_calls, bare_call, events))
    log(
        "  CPU per event %.0f us (bare %.0f, raw %.0f), per call %.2f ms (bare %.2f)",
        *(
            samples[k][-1]
            for k in ("event", "bare_event", "raw_event", "call", "bare_call")
        ),
    )


def per_event(cpu, calls, per_call, events):
    """Microseconds per streamed event, the calls' own fixed cost taken out.

    A long reply's CPU is its events' plus what every call costs (the request,
    the database, the enqueue); that part is measured on its own with 1-token
    replies and reported as the per-call figure.
    """
    return max(cpu - calls * per_call, 0.0) / events * 1e6


def _latency_round(scratch, sim, size, setup, latency):
    broker = HungBroker()
    try:
        for state, url in (("up", None), ("hung", broker.url)):
            web = WebServer(scratch, setup, sim.url, broker_url=url)
            try:
                token = login(web.url, "latency")
                latency[state].append(end_frame_ms(web, token, size["latency"]))
            finally:
                scratch.stop(web.service)
    finally:
        broker.close()
    log("  end frame %.1f ms, broker hung %.1f ms", latency["up"][-1],
        latency["hung"][-1])  # fmt: skip


def _figures(size, setup, samples, latency):
    bare = "bare SDK reader process"
    return [
        Figure(
            NAME,
            f"web CPU per streamed event, {setup}",
            "us",
            samples["event"],
            baseline=bare,
            baseline_samples=samples["bare_event"],
            goal=Goal("ratio", "<=", 1.1),
            note=f"{size['chats']} chats x {size['long_tokens']}-token replies, "
            "per-call cost taken out",
        ),
        Figure(
            NAME,
            "bare SDK CPU per event, raw events (messages.create stream=True)",
            "us",
            samples["raw_event"],
            baseline="bare SDK, messages.stream",
            baseline_samples=samples["bare_event"],
        ),
        Figure(
            NAME,
            f"web CPU per finished call, enqueue included, {setup}",
            "ms",
            samples["call"],
            baseline=bare,
            baseline_samples=samples["bare_call"],
            goal=Goal("ratio", "<=", 1.1),
            note="1-token replies",
        ),
        Figure(
            NAME,
            "end-frame latency, broker hung",
            "ms",
            latency["hung"],
            baseline="same, broker up",
            baseline_samples=latency["up"],
            goal=Goal("ratio", "<=", 1.2),
            note="20-token reply, median of the calls",
        ),
    ]
