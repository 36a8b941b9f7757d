"""``flask usage import`` on the real transcripts, read back through the reports.

Expected figures: shared/claude-code-logs/README.md (computed by ccusage 20.0.24)
and, for the fourth session, tests/test_importer.py (computed and checked by hand).
"""

import json
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from app.usage import pricing
from tests.conftest import wait_for

LOGS = Path(
    os.environ.get("TALLY_CLAUDE_LOGS_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "claude-code-logs"
)
USER = "importer"
OPUS = "claude-opus-4-6"
HAIKU = "claude-haiku-4-5-20251001"
SONNET_45 = "claude-sonnet-4-5-20250929"


def measures(calls, tokens, cost):
    inp, out, write, read = tokens
    return {
        "calls": calls,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_creation_tokens": write,
        "cache_read_tokens": read,
        "total_tokens": inp + out + write + read,
        "cost": cost,
        "unpriced_calls": 0,
    }


# Session id: (UTC day, calls, input / output / cache write / cache read, cost).
SESSIONS = {
    "d3ad4cdc-5657-435d-98fa-0035d53e383d": (
        "2025-06-08",
        measures(62, (114, 16_769, 174_552, 3_754_072), "2.0326686"),
    ),
    "fe5e1c67-53e7-4862-81ae-d0e013e3270b": (
        "2025-09-03",
        measures(170, (818, 51_933, 137_976, 3_647_854), "2.3932152"),
    ),
    "8463c716-a2ea-4c14-9efa-87158ebd9f20": (
        "2026-02-11",
        measures(157, (2_578, 40_359, 276_819, 16_207_141), "11.6643627"),
    ),
    "ae4a77f8-aedd-4bc1-888f-c94edc91af04": (
        "2026-02-12",
        measures(221, (2_653, 49_482, 377_624, 16_600_744), "6.1725718"),
    ),
}
# Per model on the day of each spotter session (each day holds one session).
MODELS = {
    "2026-02-11": {
        HAIKU: measures(13, (94, 33, 13_554, 299_487), "0.0573157"),
        OPUS: measures(144, (2_484, 40_326, 263_265, 15_907_654), "11.607047"),
    },
    "2026-02-12": {
        HAIKU: measures(133, (150, 29_879, 141_785, 10_933_461), "1.42012235"),
        OPUS: measures(85, (95, 19_596, 217_025, 5_638_009), "4.66578575"),
        SONNET_45: measures(3, (2_408, 7, 18_814, 29_274), "0.0866637"),
    },
}
ALL = measures(610, (6_163, 158_543, 966_971, 40_209_811), "22.2628183")


@pytest.fixture(autouse=True)
def list_prices_only(monkeypatch, tmp_path):
    # The README's costs are list prices: no local override may change them.
    empty = tmp_path / "no_overrides.json"
    empty.write_text('{"models": {}}')
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(empty))
    pricing.reload_overrides()
    yield
    pricing.reload_overrides()


def usage(app, *args):
    result = app.test_cli_runner().invoke(args=["usage", *args])
    assert result.exit_code == 0, result.output
    return result


def report(app, name, *args):
    return json.loads(usage(app, name, *args, "--format", "json").stdout)


def import_logs(app, *args):
    return usage(app, "import", str(LOGS), "--user", USER, *args).stdout


def assert_readme_figures(app):
    sessions = report(app, "sessions", "--user", USER)
    assert [s["session_id"] for s in sessions] == list(SESSIONS)[::-1]
    for row in sessions:
        day, expected = SESSIONS[row.pop("session_id")]
        assert row.pop("username") == USER
        assert row.pop("first_at")[:10] == row.pop("last_at")[:10] == day
        assert row == expected

    days = report(app, "daily")
    assert days == [
        {"day": day, "username": USER, **expected}
        for day, expected in SESSIONS.values()
    ]
    assert report(app, "daily", "--from-ledger") == days

    for day, by_model in MODELS.items():
        models = report(app, "models", "--since", day, "--until", day)
        assert models == [{"model": m, **figures} for m, figures in by_model.items()]
    assert report(app, "users") == [{"username": USER, **ALL}]


def snapshot(db):
    with db.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table}"))]
            for table in ("usage_records", "session_usage", "daily_usage")
        }


def summary(output):
    """The ``name: value`` lines of the import summary."""
    return dict(re.findall(r"^([a-z ,()]+): (.+)$", output, re.MULTILINE))


SUMMARY = {
    "files": "8",
    "lines read": "4,733",
    "usage lines": "1,070 (460 repeats)",
    "skipped, no usage": "758",
    "skipped, progress line (nested usage is counted on its own lines)": "2,905",
    "calls": "610",
    "unpriced calls": "0",
    "total tokens": "41,341,488",
    "total cost": "$22.2628183",
}


def test_direct_import_gives_the_readme_figures_and_a_reimport_changes_nothing(app, db):
    first = import_logs(app, "--direct", "--batch-size", "100")

    assert first.startswith(f"created user {USER}\n")
    assert f"imported 610 calls for {USER}: 610 new, 0 already saved" in first
    assert summary(first) == {
        **SUMMARY,
        "new calls saved": "610",
        "already saved": "0",
    }
    assert_readme_figures(app)
    before = snapshot(db)
    assert len(before["usage_records"]) == 610

    again = import_logs(app, "--direct")
    assert "created user" not in again
    assert f"imported 610 calls for {USER}: 0 new, 610 already saved" in again
    assert summary(again)["total cost"] == "$22.2628183"
    assert snapshot(db) == before
    assert "ok" in usage(app, "verify").stdout


def saves_done(worker):
    return len(re.findall(r"Task tally\.save_usage\[\S+\] succeeded", worker.output()))


def test_import_through_the_worker_gives_the_same_figures(app, db, worker):
    done = saves_done(worker)
    first = import_logs(app)

    assert f"imported 610 calls for {USER}: 610 new, 0 already saved" in first
    assert summary(first) == {
        **SUMMARY,
        "new calls saved": "610",
        "already saved": "0",
    }
    # The ledger held every call when the command returned: both tasks committed.
    wait_for(lambda: saves_done(worker) == done + 2, message="two tasks logged")
    assert_readme_figures(app)
    before = snapshot(db)

    again = import_logs(app, "--batch-size", "1000")
    assert f"imported 610 calls for {USER}: 0 new, 610 already saved" in again
    # The repeated task finds every call saved; wait for it before comparing.
    wait_for(lambda: saves_done(worker) == done + 3, message="the repeated task")
    assert snapshot(db) == before
    assert "ok" in usage(app, "verify").stdout
    assert "dead letters" not in worker.output()


def test_no_wait_only_queues(app, db, worker):
    done = saves_done(worker)
    out = import_logs(app, "--no-wait", "--batch-size", "1000")

    assert "queued 610 calls in 1 tasks" in out
    assert "new calls saved" not in out
    wait_for(lambda: saves_done(worker) == done + 1, message="the queued task")
    assert report(app, "users") == [{"username": USER, **ALL}]


def test_one_file_and_an_existing_user(app, db):
    usage(app, "import", str(LOGS), "--user", "someone", "--direct")
    one = LOGS / "real_sniffly_sonnet4_d3ad4cdc.jsonl"
    out = usage(app, "import", str(one), "--user", "someone", "--direct").stdout

    assert "created user" not in out
    assert summary(out)["files"] == "1"
    assert "imported 62 calls for someone: 0 new, 62 already saved" in out


def test_a_missing_path_is_refused(app, db):
    result = app.test_cli_runner().invoke(
        args=["usage", "import", str(LOGS / "nowhere"), "--user", USER]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output
