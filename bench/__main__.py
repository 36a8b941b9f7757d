"""Run Tally's benchmarks and print their figures next to their baselines.

``python -m bench [--quick] [--only NAME] [--runs N]``. Needs PostgreSQL on
127.0.0.1:5432 and Redis on 127.0.0.1:6379; starts everything else itself and
drops its scratch database at the end. Writes bench/results/latest.md.
"""

import argparse
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime

from bench import chat_node, hot_path, reports, save_path
from bench.common import RESULTS, Scratch, log, markdown_table

BENCHMARKS = {
    "save_path": save_path,
    "hot_path": hot_path,
    "chat_node": chat_node,
    "reports": reports,
}


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a few minutes in all"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeat for several)",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs of each (default 3, quick 2)"
    )
    args = parser.parse_args(argv)
    args.profile = "quick" if args.quick else "full"
    args.runs = args.runs or (2 if args.quick else 3)
    return args


def run_all(names, profile, runs):
    """Figures of every named benchmark, query plans, and the names that broke."""
    figures, plans, broken = [], [], []
    with Scratch() as scratch:
        for name in names:
            started = time.monotonic()
            try:
                figures += _run_one(name, scratch, profile, runs, plans)
            except Exception:
                log("%s broke:\n%s", name, traceback.format_exc())
                broken.append(name)
            log("%s took %.0f s", name, time.monotonic() - started)
    return figures, plans, broken


def _run_one(name, scratch, profile, runs, plans):
    if name == "reports":
        return reports.run(scratch, profile, runs, plans_out=plans)
    return BENCHMARKS[name].run(scratch, profile, runs)


def report(figures, plans, broken, args, seconds):
    """The markdown the lead pastes into the README, plans appended."""
    head = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}), "
        f"{args.profile} sizes, {args.runs} runs each, {seconds / 60:.1f} minutes.",
        "Each cell: median (min-max) of the runs; ratio = median / baseline median.",
        "",
        markdown_table(figures),
    ]
    if broken:
        head += ["", f"Broken benchmarks (see the log above): {', '.join(broken)}"]
    body = ["", "## Query plans", ""]
    for name, statements in plans:
        body += [f"### {name}", "", "```", *statements, "```", ""]
    return "\n".join(head), "\n".join(body if plans else [])


def main(argv=None):
    """Run the benchmarks; exit 1 if one of them broke."""
    args = parse(argv)
    names = args.only or list(BENCHMARKS)
    started = time.monotonic()
    figures, plans, broken = run_all(names, args.profile, args.runs)
    table, plan_text = report(figures, plans, broken, args, time.monotonic() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(table + "\n" + plan_text + "\n")
    print(table)
    print(plan_text)
    log("written to %s", RESULTS / "latest.md")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
