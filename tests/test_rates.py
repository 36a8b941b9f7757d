"""Rates priced once per group give exactly what pricing each call gives."""

import random
from datetime import UTC, datetime, timedelta

from app.usage.pricing import price_call
from app.usage.rates import RateCache
from app.usage.records import CallUsage

MODELS = [
    "claude-sonnet-4-5-20250929",  # long-context tier above 200k
    "claude-opus-4-6",  # a tier before 2026-03-13, none after
    "claude-sonnet-4-20250514",
    "claude-haiku-4-5-20251001",
    "claude-3-7-sonnet-20250219",
    "claude-sonnet-5",
    "claude-opus-5",
    "claude-future-9",  # no price
    "gpt-4o",
]


def random_call(rng, n):
    total = rng.choice([0, 1, 7, 1_000, 150_000, 199_999, 200_000, 200_001, 450_000])
    read = rng.randint(0, total)
    write = rng.randint(0, total - read)
    return CallUsage(
        message_id=f"m{n}",
        user_id=1,
        session_id="s",
        model=rng.choice(MODELS),
        occurred_at=datetime(2025, 6, 1, tzinfo=UTC)
        + timedelta(hours=rng.randint(0, 13_000)),
        input_tokens=total - read - write,
        cache_creation_tokens=write,
        cache_creation_1h_tokens=rng.randint(0, write),
        cache_read_tokens=read,
        output_tokens=rng.randint(0, 40_000),
        web_search_requests=rng.choice([0, 0, 1, 3]),
        service_tier=rng.choice([None, "standard", "batch", "priority"]),
        inference_geo=rng.choice([None, "global", "not_available", "us"]),
        speed=rng.choice([None, None, "fast"]),
    )


def test_cached_rates_price_every_call_exactly_as_price_call(caplog):
    rng = random.Random(20261204)
    cache = RateCache()
    calls = [random_call(rng, n) for n in range(3_000)]

    mismatches = [
        (call, cache.price(call), price_call(call))
        for call in calls
        if cache.price(call) != price_call(call)
    ]

    assert mismatches == []
    priced = sum(price_call(call).priced for call in calls)
    assert 300 < priced < 3_000  # both priced and unpriced calls were compared
