"""The baseline reader: bare Anthropic SDK streams, one thread each, no Tally.

``python -m bench.bare --url SIM --streams K --text "tokens:200 delay:20 hi"``
reads K replies at once, the same way Tally's route does (``messages.stream``,
every event iterated), and prints one JSON object: the delay each stamped text
event took from the simulator to this reader, and the CPU the process spent.
"""

import argparse
import json
import re
import sys
import threading
import time

import anthropic

STAMP = re.compile(r"^@(\d+)@")
MODEL = "claude-sonnet-4-5"


def read_one(client, text, delays, stamps, errors, raw=False):
    """Read one reply; ``raw`` reads bare events, without the SDK's snapshot."""
    events = 0
    request = dict(
        model=MODEL, max_tokens=4096, messages=[{"role": "user", "content": text}]
    )
    try:
        with _open(client, request, raw) as stream:
            for event in stream:
                events += 1
                _take(event, delays, stamps)
    except anthropic.APIError as exc:
        errors.append(repr(exc)[:300])
    return events


def _open(client, request, raw):
    if raw:
        return client.messages.create(stream=True, **request)
    return client.messages.stream(**request)


def _take(event, delays, stamps):
    if event.type != "content_block_delta" or event.delta.type != "text_delta":
        return
    stamp = STAMP.match(event.delta.text)
    if stamp:
        sent = int(stamp.group(1))
        delays.append(time.monotonic_ns() - sent)
        stamps.append(sent)


def read_many(url, streams, text, spread=0.0, rounds=1, raw=False):
    """Read ``streams`` replies at once, ``rounds`` times each; return figures."""
    client = anthropic.Anthropic(api_key="simulated", base_url=url, max_retries=0)
    results = [dict(delays=[], stamps=[], errors=[], events=0) for _ in range(streams)]

    def run(i):
        time.sleep(i * spread / max(1, streams))
        r = results[i]
        for _ in range(rounds):
            r["events"] += read_one(
                client, text, r["delays"], r["stamps"], r["errors"], raw
            )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    cpu, wall = time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"cpu_seconds": cpu, "wall_seconds": wall, "streams": results}


def main(argv=None):
    """Read the streams and print the figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--spread", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--raw", action="store_true", help="messages.create events")
    args = parser.parse_args(argv)
    figures = read_many(
        args.url, args.streams, args.text, args.spread, args.rounds, args.raw
    )
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
