"""The Claude Code transcript importer, on the real transcripts in shared/.

Expected totals and costs are the ones in shared/claude-code-logs/README.md, which
an independent tool (ccusage 20.0.24) computed from the same files.
"""

import json
import os
import shutil
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from app.usage import pricing
from app.usage.importer import (
    SKIP_BAD_ID,
    SKIP_BAD_TIME,
    SKIP_BAD_USAGE,
    SKIP_BLANK,
    SKIP_NO_MESSAGE_ID,
    SKIP_NO_USAGE,
    SKIP_NOT_JSON,
    SKIP_NOT_OBJECT,
    SKIP_PROGRESS,
    SKIP_SYNTHETIC,
    iter_transcript_files,
    read_calls,
    session_id_from_path,
)
from app.usage.pricing import price_call, reload_overrides

LOGS = Path(
    os.environ.get("TALLY_CLAUDE_LOGS_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "claude-code-logs"
)
SESSIONS = {
    "d3ad4cdc": "d3ad4cdc-5657-435d-98fa-0035d53e383d",
    "fe5e1c67": "fe5e1c67-53e7-4862-81ae-d0e013e3270b",
    "8463c716": "8463c716-a2ea-4c14-9efa-87158ebd9f20",
    "ae4a77f8": "ae4a77f8-aedd-4bc1-888f-c94edc91af04",
}
OPUS = "claude-opus-4-6"
HAIKU = "claude-haiku-4-5-20251001"
SONNET_45 = "claude-sonnet-4-5-20250929"

# README: per session and UTC day, input / output / cache write / cache read, cost.
README_DAYS = {
    "d3ad4cdc": (date(2025, 6, 8), (114, 16_769, 174_552, 3_754_072), "2.0326686"),
    "fe5e1c67": (date(2025, 9, 3), (818, 51_933, 137_976, 3_647_854), "2.3932152"),
    "8463c716": (date(2026, 2, 11), (2_578, 40_359, 276_819, 16_207_141), "11.6643627"),
}
README_8463C716_MODELS = {
    OPUS: ((2_484, 40_326, 263_265, 15_907_654), "11.607047"),
    HAIKU: ((94, 33, 13_554, 299_487), "0.0573157"),
}


@pytest.fixture(autouse=True)
def no_local_overrides(monkeypatch, tmp_path):
    empty = tmp_path / "no_overrides.json"
    empty.write_text('{"models": {}}')
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(empty))
    reload_overrides()
    yield
    reload_overrides()


def session_files(short_id):
    files = [p for p in iter_transcript_files(LOGS) if short_id in p.name]
    assert files, f"no transcripts for {short_id} in {LOGS}"
    return files


def totals(calls):
    return (
        sum(c.input_tokens for c in calls),
        sum(c.output_tokens for c in calls),
        sum(c.cache_creation_tokens for c in calls),
        sum(c.cache_read_tokens for c in calls),
    )


def cost(calls):
    prices = [price_call(c) for c in calls]
    assert all(p.priced for p in prices)
    return sum((p.cost for p in prices), Decimal(0))


def group(calls, key):
    groups = defaultdict(list)
    for c in calls:
        groups[key(c)].append(c)
    return dict(groups)


# --- the README's sessions ------------------------------------------------------


@pytest.mark.parametrize("short_id", sorted(README_DAYS))
def test_session_totals_and_cost_match_the_readme(short_id):
    day, tokens, usd = README_DAYS[short_id]
    calls = read_calls(session_files(short_id), user_id=7).calls

    assert {c.session_id for c in calls} == {SESSIONS[short_id]}
    assert totals(calls) == tokens
    assert cost(calls) == Decimal(usd)
    by_day = group(calls, lambda c: c.occurred_at.date())
    assert {d: totals(cs) for d, cs in by_day.items()} == {day: tokens}
    assert {d: cost(cs) for d, cs in by_day.items()} == {day: Decimal(usd)}


def test_opus_and_haiku_of_session_8463c716_match_the_readme():
    calls = read_calls(session_files("8463c716"), user_id=7).calls
    by_model = group(calls, lambda c: c.model)

    assert {m: totals(cs) for m, cs in by_model.items()} == {
        m: tokens for m, (tokens, _) in README_8463C716_MODELS.items()
    }
    assert {m: cost(cs) for m, cs in by_model.items()} == {
        m: Decimal(usd) for m, (_, usd) in README_8463C716_MODELS.items()
    }
    # Every cache write of this session is 1-hour, priced at 2x input.
    assert all(c.cache_creation_1h_tokens == c.cache_creation_tokens for c in calls)


def test_fields_of_an_imported_call():
    calls = read_calls(session_files("8463c716"), user_id=7).calls
    first = calls[0]
    assert first.message_id == "msg_01L6rJ343R7Eu6pjghF1Hkdb"
    assert first.request_id == "req_011CY31VCxTFDdP1DGbZLeHY"
    assert first.model == OPUS
    assert first.source == "import"
    assert first.user_id == 7
    assert first.occurred_at.tzinfo == UTC
    assert first.service_tier == "standard"
    # Its fullest line reports inference_geo "", kept as unknown.
    assert first.inference_geo is None
    assert (first.cache_creation_tokens, first.cache_creation_1h_tokens) == (8052, 8052)


def test_sub_agent_calls_come_from_their_own_files_not_from_progress_lines():
    parent = [p for p in session_files("8463c716") if ".subagents." not in p.name]
    alone = read_calls(parent, user_id=7)
    # The parent file repeats Haiku sub-agent usage only inside progress lines.
    assert HAIKU not in {c.model for c in alone.calls}
    assert alone.skipped[SKIP_PROGRESS] == 1_117

    with_agents = read_calls(session_files("8463c716"), user_id=7).calls
    agents = [c for c in with_agents if c.model == HAIKU]
    assert len(agents) == 13
    assert {c.session_id for c in agents} == {SESSIONS["8463c716"]}


def test_inline_sidechain_calls_are_counted():
    calls = read_calls(session_files("fe5e1c67"), user_id=7).calls
    text = session_files("fe5e1c67")[0].read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    sidechain_ids = {
        e["message"]["id"]
        for e in lines
        if e.get("isSidechain")
        and isinstance(e.get("message"), dict)
        and "usage" in e["message"]
    }
    assert sidechain_ids
    assert sidechain_ids <= {c.message_id for c in calls}


def test_every_line_is_a_usage_line_or_skipped_for_a_reason():
    result = read_calls(session_files("ae4a77f8"), user_id=7)
    assert result.lines_read == 2_427
    assert result.usage_lines == 424
    assert len(result.calls) == 221
    assert result.repeats == 203
    assert dict(result.skipped) == {SKIP_NO_USAGE: 294, SKIP_PROGRESS: 1_709}
    assert result.lines_read == result.usage_lines + result.lines_skipped


# --- the fourth session, computed by Tally ----------------------------------------

# Not in the README: computed by Tally's rules (read_calls + price_call) and
# cross-checked by test_fourth_session_by_hand below, which repeats the rules with
# plain json and whole numbers, without Tally's code or genai-prices.
AE4A77F8_MODELS = {
    OPUS: (85, (95, 19_596, 217_025, 5_638_009), "4.66578575"),
    HAIKU: (133, (150, 29_879, 141_785, 10_933_461), "1.42012235"),
    SONNET_45: (3, (2_408, 7, 18_814, 29_274), "0.0866637"),
}
AE4A77F8_DAY = (date(2026, 2, 12), (2_653, 49_482, 377_624, 16_600_744), "6.1725718")


def test_fourth_session_totals_and_cost():
    calls = read_calls(session_files("ae4a77f8"), user_id=7).calls
    by_model = group(calls, lambda c: c.model)
    day, tokens, usd = AE4A77F8_DAY

    assert {c.session_id for c in calls} == {SESSIONS["ae4a77f8"]}
    assert {m: (len(cs), totals(cs), cost(cs)) for m, cs in by_model.items()} == {
        m: (n, t, Decimal(c)) for m, (n, t, c) in AE4A77F8_MODELS.items()
    }
    assert (totals(calls), cost(calls)) == (tokens, Decimal(usd))
    assert {c.occurred_at.date() for c in calls} == {day}


# Hundredths of a dollar per MTok: input, 5m write, 1h write, cache read, output.
CENTS_PER_MTOK = {
    OPUS: (500, 625, 1_000, 50, 2_500),
    HAIKU: (100, 125, 200, 10, 500),
    SONNET_45: (300, 375, 600, 30, 1_500),
}


def test_fourth_session_by_hand():
    best = {}
    for path in session_files("ae4a77f8"):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            message = entry.get("message")
            if entry.get("type") == "progress" or not isinstance(message, dict):
                continue
            if "usage" not in message:
                continue
            u = message["usage"]
            size = sum(
                u.get(k, 0)
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                )
            )
            key = (message["id"], entry.get("requestId") or "")
            if key not in best or size > best[key][0]:
                best[key] = (size, message["model"], u)

    by_model = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for _, model, u in best.values():
        written = u.get("cache_creation_input_tokens", 0)
        one_hour = (u.get("cache_creation") or {}).get("ephemeral_1h_input_tokens", 0)
        # No call reaches the 200k long-context tier, so base rates apply.
        assert u["input_tokens"] + written + u["cache_read_input_tokens"] <= 200_000
        inp, five_m, one_h, read, out = CENTS_PER_MTOK[model]
        row = by_model[model]
        row[0] += 1
        row[1] += u["input_tokens"]
        row[2] += u["output_tokens"]
        row[3] += written
        row[4] += u["cache_read_input_tokens"]
        row[5] += (
            u["input_tokens"] * inp
            + (written - one_hour) * five_m
            + one_hour * one_h
            + u["cache_read_input_tokens"] * read
            + u["output_tokens"] * out
        )

    assert {
        m: (n, (i, o, w, r), Decimal(units).scaleb(-8))
        for m, (n, i, o, w, r, units) in by_model.items()
    } == {m: (n, t, Decimal(c)) for m, (n, t, c) in AE4A77F8_MODELS.items()}


# --- every session at once --------------------------------------------------------


def test_all_transcripts_at_once_keep_sessions_apart():
    calls = read_calls(iter_transcript_files(LOGS), user_id=7).calls
    by_session = group(calls, lambda c: c.session_id)
    assert {s: len(cs) for s, cs in by_session.items()} == {
        SESSIONS["d3ad4cdc"]: 62,
        SESSIONS["fe5e1c67"]: 170,
        SESSIONS["8463c716"]: 157,
        SESSIONS["ae4a77f8"]: 221,
    }


def test_the_same_file_given_twice_is_counted_once():
    files = session_files("d3ad4cdc")
    twice = read_calls(files + files, user_id=7)
    assert len(twice.calls) == 62
    assert twice.repeats == 2 * 73 - 62


# --- folders ------------------------------------------------------------------------


def test_a_projects_folder_in_either_layout(tmp_path):
    project = tmp_path / "projects" / "-home-user-app"
    nested = project / SESSIONS["8463c716"] / "subagents"
    nested.mkdir(parents=True)
    for source in session_files("8463c716"):
        if ".subagents." in source.name:
            agent = source.name.split(".subagents.", 1)[1]
            shutil.copy(source, nested / agent)
        else:
            shutil.copy(source, project / f"{SESSIONS['8463c716']}.jsonl")
    (project / "notes.txt").write_text("not a transcript")

    files = iter_transcript_files(tmp_path / "projects")
    assert [p.relative_to(project).as_posix() for p in files] == [
        f"{SESSIONS['8463c716']}/subagents/agent-a7be2f0.jsonl",
        f"{SESSIONS['8463c716']}/subagents/agent-acompact-f46190.jsonl",
        f"{SESSIONS['8463c716']}.jsonl",
    ]
    calls = read_calls(files, user_id=7).calls
    assert totals(calls) == README_DAYS["8463c716"][1]
    assert cost(calls) == Decimal("11.6643627")

    assert iter_transcript_files(LOGS / "real_sniffly_sonnet4_d3ad4cdc.jsonl") == [
        LOGS / "real_sniffly_sonnet4_d3ad4cdc.jsonl"
    ]
    with pytest.raises(FileNotFoundError):
        iter_transcript_files(tmp_path / "nowhere")


def test_session_of_a_file_when_lines_do_not_say():
    assert session_id_from_path(Path("p/abc.jsonl")) == "abc"
    assert session_id_from_path(Path("p/abc/subagents/agent-x.jsonl")) == "abc"
    assert session_id_from_path(Path("p/abc.subagents.agent-x.jsonl")) == "abc"


# --- line rules, on small hand-written transcripts -----------------------------------


def line(msg_id="msg_1", request_id="req_1", usage=None, **extra):
    entry = {
        "type": "assistant",
        "sessionId": "sess-1",
        "timestamp": "2026-02-11T21:41:44.800Z",
        "requestId": request_id,
        "message": {
            "id": msg_id,
            "model": "claude-opus-4-6",
            "usage": usage or {"input_tokens": 3, "output_tokens": 1},
        },
    }
    entry.update(extra)
    return json.dumps(entry)


def write(tmp_path, *lines, name="sess-1.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_repeats_keep_the_line_with_the_largest_total_not_the_first(tmp_path):
    early = {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 10}
    final = {"input_tokens": 3, "output_tokens": 250, "cache_read_input_tokens": 10}
    path = write(
        tmp_path,
        line(usage=early, timestamp="2026-02-11T21:41:44Z"),
        line(usage=final, timestamp="2026-02-11T21:41:50Z"),
        line(usage=early, timestamp="2026-02-11T21:41:51Z"),
    )
    result = read_calls([path], user_id=1)
    [kept] = result.calls
    assert kept.output_tokens == 250
    assert kept.occurred_at == datetime(2026, 2, 11, 21, 41, 50, tzinfo=UTC)
    assert (result.usage_lines, result.repeats) == (3, 2)


def test_a_call_is_a_message_id_and_a_request_id(tmp_path):
    path = write(
        tmp_path,
        line("msg_1", "req_1"),
        line("msg_1", "req_2"),
        line("msg_2", None),
        line("msg_2", None),
    )
    calls = read_calls([path], user_id=1).calls
    assert sorted(c.key for c in calls) == [
        ("msg_1", "req_1"),
        ("msg_1", "req_2"),
        ("msg_2", ""),
    ]


def test_calls_are_deduplicated_across_files(tmp_path):
    parent = write(tmp_path, line("msg_1"), name="a.jsonl")
    agent = write(
        tmp_path, line("msg_1"), line("msg_9"), name="a.subagents.agent-x.jsonl"
    )
    assert len(read_calls([parent, agent], user_id=1).calls) == 2


def test_usage_fields_are_read(tmp_path):
    usage = {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 40,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 30,
            "ephemeral_1h_input_tokens": 70,
        },
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
        "service_tier": "batch",
        "inference_geo": "us",
        "speed": "fast",
    }
    [c] = read_calls([write(tmp_path, line(usage=usage, isSidechain=True))], 1).calls
    assert (c.input_tokens, c.output_tokens) == (5, 7)
    assert (c.cache_creation_tokens, c.cache_creation_1h_tokens) == (100, 70)
    assert c.cache_read_tokens == 40
    assert (c.web_search_requests, c.web_fetch_requests) == (2, 1)
    assert (c.service_tier, c.inference_geo, c.speed) == ("batch", "us", "fast")


def test_timestamps_become_utc(tmp_path):
    path = write(tmp_path, line(timestamp="2026-02-12T01:30:00+02:00"))
    [c] = read_calls([path], user_id=1).calls
    assert c.occurred_at == datetime(2026, 2, 11, 23, 30, tzinfo=UTC)
    assert c.occurred_at.date() == date(2026, 2, 11)


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    synthetic = json.loads(line("msg_s"))
    synthetic["message"]["model"] = "<synthetic>"
    no_id = json.loads(line())
    del no_id["message"]["id"]
    nested_usage = {
        "type": "progress",
        "data": {"message": {"message": {"id": "msg_p", "usage": {"input_tokens": 9}}}},
    }
    path = write(
        tmp_path,
        line("msg_ok"),
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"type": "user", "message": {"role": "user", "content": "hi"}}),
        json.dumps(nested_usage),
        json.dumps(synthetic),
        json.dumps(no_id),
        line("msg_t", timestamp="yesterday"),
        line("msg_n", timestamp="2026-02-11T21:41:44"),
        line("msg_u", usage={"input_tokens": -1, "output_tokens": 2}),
        line("msg_v", usage={"input_tokens": "3", "output_tokens": 2}),
        line("msg_w", usage={"output_tokens": 2}),
        line("m" * 129),
    )
    path.write_bytes(path.read_bytes() + b"\xff\xfe broken utf-8\n")

    result = read_calls([path], user_id=1)
    assert [c.message_id for c in result.calls] == ["msg_ok"]
    assert dict(result.skipped) == {
        SKIP_BLANK: 1,
        SKIP_NOT_JSON: 2,
        SKIP_NOT_OBJECT: 1,
        SKIP_NO_USAGE: 1,
        SKIP_PROGRESS: 1,
        SKIP_SYNTHETIC: 1,
        SKIP_NO_MESSAGE_ID: 1,
        SKIP_BAD_TIME: 2,
        SKIP_BAD_USAGE: 3,
        SKIP_BAD_ID: 1,
    }
    assert result.lines_read == 15
    assert result.lines_read == result.usage_lines + result.lines_skipped


def test_a_line_without_session_id_takes_the_file_session(tmp_path):
    entry = json.loads(line())
    del entry["sessionId"]
    path = write(tmp_path, json.dumps(entry), name="abc.subagents.agent-1.jsonl")
    [c] = read_calls([path], user_id=1).calls
    assert c.session_id == "abc"
