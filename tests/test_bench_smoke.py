"""Each benchmark still runs and measures something sane, at a tiny size.

Nothing here is timed: ``python -m bench`` measures; this only keeps a broken
benchmark from reaching the README. Every benchmark checks its own counts too
(the save path raises unless each record is saved exactly once).
"""

import pytest
from sqlalchemy import func, select

from app.db import make_session_factory, unit_of_work
from app.models import SessionUsage, UsageRecord
from app.usage.reports import verify
from bench import chat_node, hot_path, reports, save_path
from bench.common import Scratch, markdown_table


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    with Scratch(log_dir=tmp_path_factory.mktemp("bench")) as env:
        yield env


def ledger(scratch):
    with unit_of_work(make_session_factory(scratch.engine)) as session:
        records = session.scalar(select(func.count(UsageRecord.id)))
        calls = session.scalar(select(func.sum(SessionUsage.calls)))
        return records, calls, verify(session)


def positive(figure):
    return all(v > 0 for v in figure.samples + figure.baseline_samples)


def test_save_path_saves_every_record_once(scratch):
    figures = save_path.run(scratch, "smoke", runs=1)

    names = [f.name for f in figures]
    assert names == [
        "end to end, worker prefork x2, relay batch 100",
        "save_calls alone, 100 a transaction",
        "one task a record (naive), worker prefork x2",
    ]
    assert all(len(f.samples) == 1 and len(f.baseline_samples) == 1 for f in figures)
    assert all(positive(f) for f in figures)
    # The last measurement sent 60 single-record tasks: 60 records, 60 calls.
    assert ledger(scratch) == (60, 60, [])


def test_hot_path_measures_cpu_and_latency(scratch):
    figures = hot_path.run(scratch, "smoke", runs=1, setup="werkzeug")

    assert [f.unit for f in figures] == ["us", "us", "ms", "ms"]
    assert all(len(f.samples) == 1 and positive(f) for f in figures)


def test_chat_node_holds_a_few_chats(scratch):
    figures = chat_node.run(
        scratch, "smoke", runs=1, only_setups=("werkzeug",), node_workers=2
    )

    held, node, idle_cpu, memory = figures
    assert held.name == "chats sustained, 1 process, werkzeug"
    assert node.name == "chats sustained, 1 node: 2 gevent workers"
    # The ramp tries 1, 2 and 4 chats; a single slow chat is always sustained.
    for figure in (held, node):
        assert figure.samples[0] in (1, 2, 4)
        assert figure.baseline_samples[0] in (1, 2, 4)
    assert memory.unit == "KiB" and memory.samples[0] > 0
    assert idle_cpu.unit == "us/s" and idle_cpu.samples[0] >= 0


def test_reports_time_every_query_and_explain_it(scratch):
    plans = []
    figures = reports.run(scratch, "smoke", runs=1, plans_out=plans)

    assert [f.name for f in figures] == [c.name for c in reports.CASES]
    assert all(len(f.samples) == 2 and positive(f) for f in figures)
    assert [name for name, _ in plans] == [c.name for c in reports.CASES]
    assert all("Execution Time" in "\n".join(p) for _, p in plans)
    assert ledger(scratch) == (20_000, 20_000, [])
    assert "| reports |" in markdown_table(figures)
