"""A local stand-in for the Anthropic Messages API.

Tally talks to it when no ``ANTHROPIC_API_KEY`` is set, and every test talks to it
instead of the network. It replays recorded streams byte for byte (``replay:NAME``),
generates replies of any length in the live wire format (``tokens:N``), paces them
(``delay:MS``), pauses them after the third delta (``stall:MS``) and injects faults
(``fault:429``, ``fault:529``, ``fault:error-midstream``, ``fault:drop``).
Directives go in the last user message.
"""

import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import namedtuple
from itertools import cycle, islice
from pathlib import Path

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_GENERATED_TOKENS = 100_000
MIDSTREAM_DELTAS = 3
REPLAY = re.compile(r"replay:(\S+)")
DIRECTIVE = re.compile(r"\b(tokens|delay|stall|fault):(\S+)")
# An empty chunk: send what the unpaced response has gathered (``_coalesced``).
FLUSH = b""
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
ERROR_FRAGMENT = "12_error_event_overloaded.fragment.json"
# The same payload as the recorded fragment, used when the streams folder is absent.
OVERLOADED_EVENT = (
    b'{"type":"error","error":{"details":null,"type":"overloaded_error",'
    b'"message":"Overloaded"} }'
)
FILLER = (
    "The simulator keeps counting words so that every token in this reply is "
    "accounted for exactly once, just as a real model reply would be."
)
FAULTS = {
    "429": (429, "rate_limit_error", "Simulated rate limit (fault:429)."),
    "529": (529, "overloaded_error", "Simulated overload (fault:529)."),
}
MIDSTREAM_FAULTS = ("error-midstream", "drop")

Served = namedtuple("Served", "path model directive")
_LOCK = threading.Lock()


class SimulatorError(Exception):
    """An error the API would answer with an Anthropic-shaped JSON body."""

    def __init__(self, status, kind, message):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def default_streams_dir():
    """TALLY_STREAMS_DIR, else the shared recordings next to the repo, else None."""
    if os.environ.get("TALLY_STREAMS_DIR"):
        return Path(os.environ["TALLY_STREAMS_DIR"])
    shared = REPO_ROOT.parent / "shared" / "streams"
    return shared if shared.is_dir() else None


def create_simulator(streams_dir=None, delay_ms=0.0):
    """Build the simulator app; ``streams_dir`` holds the recordings to replay."""
    app = Flask(__name__)
    app.json.sort_keys = False  # keep the API's field order: "type" first
    app.config.update(
        SIM_STREAMS_DIR=Path(streams_dir) if streams_dir else None,
        SIM_DELAY_MS=float(delay_ms),
        SIM_REQUESTS=[],
        SIM_ABANDONED=0,
        SIM_STALLED=0,
    )
    app.register_error_handler(SimulatorError, _simulator_error)
    app.register_error_handler(HTTPException, _http_error)
    app.after_request(_add_request_id)
    app.get("/health")(_health)
    app.post("/v1/messages")(_messages)
    return app


def requests_served(app):
    """How many Messages API calls the simulator has answered."""
    return len(app.config["SIM_REQUESTS"])


def serve_in_thread(app, host="127.0.0.1", port=0):
    """Serve ``app`` from a daemon thread; return (server, base_url)."""
    server = make_server(host, port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_port}"


# --- request handling ------------------------------------------------------


def _health():
    return jsonify(status="ok", service="tally-simulator")


def _messages():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SimulatorError(400, "invalid_request_error", "Body must be JSON.")
    text = _last_user_text(body.get("messages"))
    directives = _directives(text)
    _record(body, text, directives)

    if directives.get("fault") in FAULTS:
        status, kind, message = FAULTS[directives["fault"]]
        raise SimulatorError(status, kind, message)
    delay = float(directives.get("delay", current_app.config["SIM_DELAY_MS"]))
    replay = REPLAY.match(text)
    if replay:
        return _replay(replay.group(1), bool(body.get("stream")), delay)
    return _generate(body, text, directives, delay)


def _record(body, text, directives):
    replay = REPLAY.match(text)
    words = [f"{k}:{v}" for k, v in directives.items()]
    directive = replay.group(0) if replay else " ".join(words) or "generated"
    served = current_app.config["SIM_REQUESTS"]
    # list.append is atomic in CPython, so threaded requests need no extra lock.
    served.append(Served(request.path, body.get("model"), directive))
    log.info("request %d: model %s, %s", len(served), body.get("model"), directive)


def _last_user_text(messages):
    if not isinstance(messages, list) or not messages:
        raise SimulatorError(400, "invalid_request_error", "messages: required.")
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = user[-1].get("content", "") if user else ""
    if isinstance(content, str):
        return content.strip()
    blocks = content if isinstance(content, list) else []
    texts = [b.get("text", "") for b in blocks if _is_text(b)]
    return " ".join(texts).strip()


def _is_text(block):
    return isinstance(block, dict) and block.get("type") == "text"


def _directives(text):
    found = dict(DIRECTIVE.findall(text))
    tokens = found.get("tokens", "1")
    if not (tokens.isascii() and tokens.isdigit()) or not (
        1 <= int(tokens) <= MAX_GENERATED_TOKENS
    ):
        raise SimulatorError(
            400, "invalid_request_error", "tokens:N needs 1 <= N <= 100000."
        )
    for name in ("delay", "stall"):
        if name in found and not _in_range(found[name], 0, 60_000):
            raise SimulatorError(
                400, "invalid_request_error", f"{name}:MS needs 0..60000."
            )
    if found.get("fault", "429") not in (*FAULTS, *MIDSTREAM_FAULTS):
        raise SimulatorError(
            400, "invalid_request_error", f"fault:{found['fault']}: unknown fault."
        )
    return found


def _in_range(raw, low, high):
    try:
        return low <= float(raw) <= high
    except ValueError:
        return False


# --- replay ----------------------------------------------------------------


def _replay(name, stream, delay):
    path = _replay_path(name)
    data = path.read_bytes()
    if name.endswith(".json"):
        if stream:
            raise _mismatch(name, "a streaming request")
        return Response(data, content_type="application/json")
    if not stream:
        raise _mismatch(name, "a non-streaming request")
    if name.endswith(".chunks.jsonl"):
        return _sse_response(_chunks_as_events(data), delay)
    # Split after each blank line so pacing works without touching a single byte.
    return _sse_response(re.split(rb"(?<=\n\n)", data), delay)


def _replay_path(name):
    streams_dir = current_app.config["SIM_STREAMS_DIR"]
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise SimulatorError(
            400, "invalid_request_error", f"replay:{name}: not a plain file name."
        )
    if streams_dir is None:
        raise SimulatorError(
            404,
            "not_found_error",
            "replay needs recorded streams: set TALLY_STREAMS_DIR or pass "
            "--streams-dir to `python -m app.simulator`.",
        )
    path = streams_dir / name
    if not path.is_file() or path.resolve().parent != streams_dir.resolve():
        raise SimulatorError(
            404, "not_found_error", f"replay:{name}: no such file in {streams_dir}."
        )
    if not name.endswith((".sse", ".chunks.jsonl", ".json")):
        raise SimulatorError(
            400, "invalid_request_error", f"replay:{name}: not .sse/.json/.jsonl."
        )
    return path


def _mismatch(name, what):
    return SimulatorError(
        400, "invalid_request_error", f"replay:{name} cannot answer {what}."
    )


def _chunks_as_events(data):
    for line in data.splitlines():
        if line.strip():
            kind = json.loads(line)["type"].encode()
            yield b"event: " + kind + b"\ndata: " + line + b"\n\n"


# --- generated replies -----------------------------------------------------


def _generate(body, text, directives, delay):
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise SimulatorError(
            400, "invalid_request_error", "max_tokens: a positive integer is required."
        )
    pieces = _reply_pieces(text, int(directives.get("tokens", 0)) or None)
    reply = _Reply(body, pieces[:max_tokens], len(pieces) > max_tokens)
    fault = directives.get("fault")
    if not body.get("stream"):
        if fault:
            raise SimulatorError(
                400, "invalid_request_error", f"fault:{fault} needs stream: true."
            )
        return jsonify(reply.message())
    if fault == "error-midstream":
        tail = [b"event: error\ndata: " + _overloaded_payload() + b"\n\n"]
        return _sse_response(reply.events(cut_after=MIDSTREAM_DELTAS, tail=tail), delay)
    if fault == "drop":
        # The body just ends: no message_delta, no message_stop.
        return _sse_response(reply.events(cut_after=MIDSTREAM_DELTAS, tail=[]), delay)
    events = reply.events()
    if "stall" in directives:
        events = _stalled(events, float(directives["stall"]), current_app.config)
    return _sse_response(events, delay)


def _stalled(events, stall_ms, app_config):
    """The events, with a pause after the first few deltas (a model thinking)."""
    for n, event in enumerate(events):
        yield event
        # message_start, content_block_start and ping come before the deltas.
        if n == 2 + MIDSTREAM_DELTAS:
            yield FLUSH
            with _LOCK:
                app_config["SIM_STALLED"] += 1
            try:
                time.sleep(stall_ms / 1000)
            finally:
                with _LOCK:
                    app_config["SIM_STALLED"] -= 1


def _reply_pieces(text, wanted):
    """Word-pieces of a deterministic reply; each piece counts as one token."""
    words = [w for w in text.split() if not DIRECTIVE.match(w)][:6]
    said = " ".join(words) if words else "nothing at all"
    pieces = re.findall(r"\s*\S+", f"Simulated reply. You said: {said}.")
    if wanted is None:
        return pieces
    filler = (" " + word for word in cycle(FILLER.split()))
    return list(islice(pieces + list(islice(filler, wanted)), wanted))


class _Reply:
    """One generated message: its id, usage figures and wire events."""

    def __init__(self, body, pieces, truncated):
        self.model = body.get("model") or "claude-sonnet-4-5"
        self.id = "msg_sim_" + secrets.token_hex(12)
        self.input_tokens = _estimate_input_tokens(body)
        self.pieces = pieces
        self.stop_reason = "max_tokens" if truncated else "end_turn"

    def usage(self, output_tokens):
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self):
        """The whole reply as a non-streaming Message."""
        text = {"type": "text", "text": "".join(self.pieces)}
        return self._message([text], self.stop_reason, len(self.pieces))

    def _message(self, content, stop_reason, output_tokens):
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": self.usage(output_tokens),
        }

    def events(self, cut_after=None, tail=None):
        """Wire events; with ``cut_after`` the stream ends in ``tail`` instead."""
        # Like the live API, message_start carries a placeholder of 1 output token.
        start = self._message([], None, 1)
        yield _event("message_start", message=start)
        block = {"type": "text", "text": ""}
        yield _event("content_block_start", index=0, content_block=block)
        yield b'event: ping\ndata: {"type": "ping"}\n\n'
        for piece in self.pieces[:cut_after]:
            delta = {"type": "text_delta", "text": piece}
            yield _event("content_block_delta", index=0, delta=delta)
        if cut_after is not None:
            yield from tail
            return
        yield from self._closing_events()

    def _closing_events(self):
        yield _event("content_block_stop", index=0)
        usage = self.usage(len(self.pieces))
        del usage["cache_creation"], usage["service_tier"]
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        yield _event("message_delta", delta=delta, usage=usage)
        yield _event("message_stop")


def _overloaded_payload():
    streams_dir = current_app.config["SIM_STREAMS_DIR"]
    path = streams_dir / ERROR_FRAGMENT if streams_dir else None
    return path.read_bytes() if path and path.is_file() else OVERLOADED_EVENT


def _estimate_input_tokens(body):
    chars = _chars(body.get("system")) + sum(
        _chars(m.get("content")) for m in body.get("messages", [])
    )
    return max(1, math.ceil(chars / 4))


def _chars(value):
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k != "type")
    return 0


def _event(kind, **fields):
    data = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


# --- responses -------------------------------------------------------------


def _sse_response(chunks, delay_ms):
    body = _paced(chunks, delay_ms) if delay_ms else _coalesced(chunks)
    body = _watched(body, current_app.config)
    return Response(body, content_type="text/event-stream; charset=utf-8")


def _watched(body, app_config):
    """Count streams the client hung up on before their last event."""
    finished = False
    try:
        yield from body
        finished = True
    finally:
        if not finished:
            with _LOCK:
                app_config["SIM_ABANDONED"] += 1


def streams_stalled(app):
    """How many streamed replies are in their ``stall:MS`` pause right now."""
    return app.config["SIM_STALLED"]


def streams_abandoned(app):
    """How many streamed replies the client closed before they ended."""
    return app.config["SIM_ABANDONED"]


def _paced(chunks, delay_ms):
    for n, chunk in enumerate(c for c in chunks if c != FLUSH):
        if n:
            time.sleep(delay_ms / 1000)
        yield chunk


def _coalesced(chunks, size=64 * 1024):
    # One socket write per event makes a 100k-token reply take seconds to send.
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size or (chunk == FLUSH and buffer):
            yield buffer
            buffer = b""
    if buffer:
        yield buffer


def _simulator_error(error):
    body = {"type": "error", "error": {"type": error.kind, "message": error.message}}
    response = jsonify(body)
    response.status_code = error.status
    if error.status in (429, 529):
        response.headers["retry-after"] = "0"
    log.info("request answered %s %s: %s", error.status, error.kind, error.message)
    return response


def _http_error(error):
    kind = "not_found_error" if error.code == 404 else "invalid_request_error"
    return _simulator_error(SimulatorError(error.code, kind, error.description))


def _add_request_id(response):
    response.headers["request-id"] = "req_sim_" + secrets.token_hex(12)
    return response
