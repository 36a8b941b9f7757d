"""The Messages API simulator, driven by the real anthropic SDK over loopback."""

import http.client
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import pytest

from app.simulator.server import create_simulator, requests_served, serve_in_thread

STREAMS = Path(
    os.environ.get("TALLY_STREAMS_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "streams"
)
MODEL = "claude-sonnet-4-5"
PIECE = re.compile(r"\s*\S+")

# What get_final_message() reports for each recording (shared/streams/SOURCES.md):
# file number, input, output, cache write, cache read, stop_reason.
RECORDED = [
    ("01", 20, 5, 0, 0, "end_turn"),
    ("02", 6, 198, 3337, 6289, "end_turn"),
    ("03", 181, 8, 0, 0, "end_turn"),
    ("04", 377, 65, 0, 0, "tool_use"),
    ("05", 1591, 175, 0, 0, "tool_use"),
    ("06", 43, 282, 0, 0, "end_turn"),
    ("07", 92, 189, 0, 0, "end_turn"),
    ("08", 22397, 637, 0, 0, "end_turn"),
    ("09", 450, 124, 0, 0, "max_tokens"),
]
SSE_FILES = ["01", "03", "04", "05", "06", "07", "08", "09"]
# file number, input, output, web searches
NON_STREAMING = [("10", 27118, 600, 2), ("11", 12, 29, None)]


@pytest.fixture(scope="module")
def streams():
    if not STREAMS.is_dir():
        pytest.skip(f"recorded streams not found at {STREAMS}: set TALLY_STREAMS_DIR")
    return STREAMS


@pytest.fixture(scope="module")
def sim():
    app = create_simulator(STREAMS if STREAMS.is_dir() else None)
    server, url = serve_in_thread(app)
    yield app, url
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(sim):
    with anthropic.Anthropic(api_key="test", base_url=sim[1], max_retries=0) as client:
        yield client


def ask(text, **extra):
    return {"model": MODEL, "max_tokens": 1024, "messages": [user(text)], **extra}


def user(text):
    return {"role": "user", "content": text}


def post(url, body):
    """POST raw JSON over loopback; return (status, headers, body bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"content-type": "application/json"}
        conn.request("POST", "/v1/messages", json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def events(raw):
    """(event name, payload) pairs of an SSE body."""
    found = re.findall(rb"event: (\S+)\ndata: (.*)\n\n", raw)
    return [(name.decode(), json.loads(data)) for name, data in found]


def recording(streams, number):
    """The file name of recording ``number``, e.g. "01_text_claude-sonnet-4-5.sse"."""
    (path,) = streams.glob(f"{number}_*")
    return path.name


def final(client, text, **extra):
    with client.messages.stream(**ask(text, **extra)) as stream:
        return stream.get_final_message()


# --- replay ----------------------------------------------------------------


@pytest.mark.parametrize("number, input_, output, written, read, stop", RECORDED)
def test_replay_gives_the_recorded_usage(
    client, streams, number, input_, output, written, read, stop
):
    message = final(client, f"replay:{recording(streams, number)}")

    assert message.usage.input_tokens == input_
    assert message.usage.output_tokens == output
    assert message.usage.cache_creation_input_tokens == written
    assert message.usage.cache_read_input_tokens == read
    assert message.stop_reason == stop


def test_replayed_web_search_counts_two_searches(client, streams):
    message = final(client, f"replay:{recording(streams, '08')}")

    assert message.usage.server_tool_use.web_search_requests == 2
    assert message.model == "claude-sonnet-4-20250514"


@pytest.mark.parametrize("number", SSE_FILES)
def test_replay_serves_the_file_byte_for_byte(sim, streams, number):
    name = recording(streams, number)

    status, headers, body = post(sim[1], ask(f"replay:{name}", stream=True))

    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_sim_")
    assert body == (streams / name).read_bytes()


def test_chunks_file_is_served_as_named_events(sim, streams):
    name = recording(streams, "02")
    lines = (streams / name).read_bytes().splitlines()

    status, _, body = post(sim[1], ask(f"replay:{name}", stream=True))

    expected = [
        b"event: " + json.loads(line)["type"].encode() + b"\ndata: " + line + b"\n\n"
        for line in lines
    ]
    assert status == 200
    assert body == b"".join(expected)


@pytest.mark.parametrize("number, input_, output, searches", NON_STREAMING)
def test_replay_non_streaming_json(
    client, sim, streams, number, input_, output, searches
):
    name = recording(streams, number)

    message = client.messages.create(**ask(f"replay:{name}"))
    status, headers, body = post(sim[1], ask(f"replay:{name}"))

    assert message.usage.input_tokens == input_
    assert message.usage.output_tokens == output
    if searches is not None:
        assert message.usage.server_tool_use.web_search_requests == searches
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert body == (streams / name).read_bytes()


def test_streaming_request_for_a_json_file_is_refused(client, streams):
    with pytest.raises(anthropic.BadRequestError) as caught:
        final(client, "replay:11_text_nonstream_claude-sonnet-4-5.json")

    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "streaming request" in caught.value.body["error"]["message"]


def test_non_streaming_request_for_an_sse_file_is_refused(client, streams):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**ask("replay:01_text_claude-sonnet-4-5.sse"))

    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "non-streaming request" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(
    "name", ["../streams/SOURCES.md", "..", "/etc/passwd", "..%2fSOURCES.md", "a/b"]
)
def test_replay_refuses_path_traversal(sim, name):
    status, headers, body = post(sim[1], ask(f"replay:{name}", stream=True))

    error = json.loads(body)
    assert status == 400
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "not a plain file name" in error["error"]["message"]
    assert headers["request-id"].startswith("req_sim_")


def test_replay_of_an_unknown_file_is_not_found(client, streams):
    with pytest.raises(anthropic.NotFoundError) as caught:
        final(client, "replay:99_missing.sse")

    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "99_missing.sse" in caught.value.body["error"]["message"]


def test_replay_without_streams_dir_says_how_to_fix_it():
    app = create_simulator(None)

    response = app.test_client().post("/v1/messages", json=ask("replay:01_x.sse"))

    assert response.status_code == 404
    assert response.json["error"]["type"] == "not_found_error"
    assert "TALLY_STREAMS_DIR" in response.json["error"]["message"]


# --- generated replies -----------------------------------------------------


def test_tokens_directive_sets_exact_output(client):
    system = "You are terse."
    prompt = "Tell me about counting tokens:50"

    message = final(client, prompt, system=system)

    text = message.content[0].text
    assert message.usage.output_tokens == 50
    assert len(PIECE.findall(text)) == 50
    assert text.startswith("Simulated reply. You said: Tell me about counting.")
    assert message.usage.input_tokens == math.ceil(len(system + prompt) / 4)
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL


def test_reply_longer_than_max_tokens_is_cut(client):
    message = final(client, "long one tokens:30", max_tokens=12)

    assert message.usage.output_tokens == 12
    assert len(PIECE.findall(message.content[0].text)) == 12
    assert message.stop_reason == "max_tokens"


def test_generated_wire_format(sim):
    status, _, body = post(sim[1], ask("hello tokens:7", stream=True))

    found = events(body)
    names = [name for name, _ in found]
    start, delta = found[0][1]["message"], found[-2][1]
    assert status == 200
    assert names == ["message_start", "content_block_start", "ping"] + [
        "content_block_delta"
    ] * 7 + ["content_block_stop", "message_delta", "message_stop"]
    assert start["id"].startswith("msg_sim_")
    assert start["usage"]["output_tokens"] == 1
    assert start["usage"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert start["usage"]["service_tier"] == "standard"
    assert delta["usage"]["output_tokens"] == 7
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"] == 4


def test_replies_are_deterministic_with_unique_ids(client):
    first = final(client, "same prompt twice")
    second = final(client, "same prompt twice")

    assert first.id != second.id
    assert first.content[0].text == second.content[0].text
    assert first.usage == second.usage


def test_non_streaming_generated_reply(client):
    raw = client.messages.with_raw_response.create(**ask("plain call tokens:9"))
    again = client.messages.with_raw_response.create(**ask("plain call tokens:9"))

    message = raw.parse()
    assert message.usage.output_tokens == 9
    assert message.usage.input_tokens == math.ceil(len("plain call tokens:9") / 4)
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert len(PIECE.findall(message.content[0].text)) == 9
    assert raw.headers["request-id"] != again.headers["request-id"]
    assert message.id != again.parse().id


def test_delay_directive_paces_events(sim):
    started = time.monotonic()
    _, _, body = post(sim[1], ask("slowly tokens:5 delay:30", stream=True))

    # 11 events, 10 pauses of 30 ms between them.
    assert len(events(body)) == 11
    assert time.monotonic() - started >= 0.3


def test_constructor_delay_paces_events():
    app = create_simulator(delay_ms=20)

    started = time.monotonic()
    response = app.test_client().post("/v1/messages", json=ask("tokens:6", stream=True))

    # 12 events, 11 pauses of 20 ms between them.
    assert len(events(response.data)) == 12
    assert time.monotonic() - started >= 0.22


# --- faults and bookkeeping ------------------------------------------------


def test_fault_429_is_a_rate_limit_error(client, sim):
    before = requests_served(sim[0])

    with pytest.raises(anthropic.RateLimitError) as caught:
        final(client, "fault:429")

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "0"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert requests_served(sim[0]) == before + 1


def test_fault_529_is_overloaded(client):
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(**ask("fault:529"))

    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_error_midstream_raises_overloaded(client, sim, streams):
    with pytest.raises(anthropic.APIStatusError) as caught:
        final(client, "fault:error-midstream")
    _, _, body = post(sim[1], ask("fault:error-midstream", stream=True))

    fragment = (streams / "12_error_event_overloaded.fragment.json").read_bytes()
    assert caught.value.status_code == 200
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert body.endswith(b"event: error\ndata: " + fragment + b"\n\n")
    assert [name for name, _ in events(body)].count("content_block_delta") == 3


def test_drop_ends_without_stop_reason(client):
    message = final(client, "fault:drop tokens:20")

    assert message.stop_reason is None
    assert message.usage.output_tokens == 1
    assert message.content[0].text == "Simulated reply. You"


def test_requests_are_counted_and_health_is_not(client, sim):
    app, url = sim
    before = requests_served(app)

    final(client, "count me")
    client.messages.create(**ask("and me"))
    health = app.test_client().get("/health")

    assert health.status_code == 200
    assert health.json["status"] == "ok"
    assert requests_served(app) == before + 2
    assert app.config["SIM_REQUESTS"][-1] == ("/v1/messages", MODEL, "generated")


def test_command_line_serves_on_loopback(tmp_path):
    command = [sys.executable, "-m", "app.simulator", "--port", "0"]
    command += ["--streams-dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split()[-1]
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            health = json.load(response)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()

    assert url.startswith("http://127.0.0.1:")
    assert health["status"] == "ok"
