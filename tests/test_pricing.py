"""Pricing rules: one test per rule, each with a small call and its exact cost.

Expected costs are worked out by hand from Anthropic's list prices in USD per
million tokens (https://platform.claude.com/docs/en/about-claude/pricing).
"""

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from app.usage import pricing
from app.usage.pricing import (
    UNPRICED,
    OverridesError,
    context_window,
    find_model,
    has_price,
    load_overrides,
    parse_overrides,
    price_call,
    reload_overrides,
    to_genai_usage,
)
from app.usage.records import CallUsage

SUMMER_2025 = datetime(2025, 8, 1, 12, tzinfo=UTC)
LATE_2026 = datetime(2026, 11, 2, 12, tzinfo=UTC)


def call(model, occurred_at=SUMMER_2025, **usage):
    return CallUsage(
        message_id="msg_test",
        user_id=1,
        session_id="s1",
        model=model,
        occurred_at=occurred_at,
        **usage,
    )


@pytest.fixture(autouse=True)
def no_local_overrides(monkeypatch, tmp_path):
    """Every test prices against genai-prices alone unless it writes overrides."""
    empty = tmp_path / "no_overrides.json"
    empty.write_text('{"models": {}}')
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(empty))
    reload_overrides()
    yield
    reload_overrides()


def write_overrides(monkeypatch, tmp_path, models):
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"models": models}))
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(path))
    reload_overrides()
    return path


# --- the cases from the issue --------------------------------------------------


def test_one_hour_cache_write_costs_twice_the_input_price():
    price = price_call(
        call(
            "claude-sonnet-4-5",
            cache_creation_tokens=100_000,
            cache_creation_1h_tokens=100_000,
        )
    )
    assert price.cost == Decimal("0.600")  # 100k x $6/MTok


def test_long_context_tier_prices_the_whole_call():
    price = price_call(
        call("claude-sonnet-4-5", input_tokens=250_000, output_tokens=1_000)
    )
    # Over 200k input, input is $6 and output $22.50 per MTok.
    assert price.cost == Decimal("1.5225")


def test_cache_write_without_ttl_split_is_priced_at_five_minutes():
    usage = dict(input_tokens=3, cache_creation_tokens=12_304, output_tokens=550)
    price = price_call(call("claude-3-7-sonnet-20250219", **usage))
    # 3 x $3 + 12,304 x $3.75 + 550 x $15, per MTok.
    assert price.cost == Decimal("0.054399")


def test_claude_opus_5():
    price = price_call(
        call(
            "claude-opus-5", LATE_2026, input_tokens=1_000_000, output_tokens=1_000_000
        )
    )
    assert price.cost == Decimal("30")
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-opus-5"


def test_non_claude_model_is_unpriced_not_free():
    assert price_call(call("gpt-4o", input_tokens=1_000, output_tokens=10)) == UNPRICED
    assert not UNPRICED.priced


def test_recorded_web_search_call_sse_08():
    # shared/streams/08_web_search_claude-sonnet-4.sse: final usage of the stream.
    usage = dict(input_tokens=22_397, output_tokens=637, web_search_requests=2)
    price = price_call(call("claude-sonnet-4-20250514", **usage))
    # 22,397 x $3 + 637 x $15 per MTok, plus 2 searches at $10 per 1,000.
    assert price.cost == Decimal("0.096746")
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-sonnet-4-0"


# --- unknown and look-alike models ---------------------------------------------


def test_new_claude_id_is_unpriced():
    assert price_call(call("claude-sonnet-9-9", input_tokens=10)) == UNPRICED
    assert find_model("claude-sonnet-9-9") is None


def test_look_alike_id_does_not_get_an_older_family_price():
    # genai-prices matches on prefixes: on its own it prices these as older models.
    assert pricing._provider().find_model("claude-opus-4-10").id == "claude-opus-4-1"
    assert (
        pricing._provider().find_model("claude-sonnet-4-50").id == "claude-sonnet-4-5"
    )
    assert find_model("claude-opus-4-10") is None
    assert find_model("claude-sonnet-4-50") is None
    assert price_call(call("claude-opus-4-10", input_tokens=10)) == UNPRICED


@pytest.mark.parametrize(
    ("model_ref", "model_id"),
    [
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-6", "claude-opus-4-6"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"),
        ("claude-opus-5-20260723", "claude-opus-5"),
    ],
)
def test_real_model_ids_and_snapshots_are_found(model_ref, model_id):
    assert find_model(model_ref).id == model_id


def test_context_window():
    assert context_window("claude-opus-4-6") == 1_000_000
    assert context_window("claude-sonnet-4-20250514") == 200_000
    assert context_window("claude-sonnet-9-9") == pricing.DEFAULT_CONTEXT_WINDOW


# --- cache writes -----------------------------------------------------------------


def test_five_minute_and_one_hour_writes_have_their_own_rates():
    five = call("claude-sonnet-4-20250514", cache_creation_tokens=10_000)
    hour = call(
        "claude-sonnet-4-20250514",
        cache_creation_tokens=10_000,
        cache_creation_1h_tokens=10_000,
    )
    assert price_call(five).cost == Decimal("0.0375")  # $3.75/MTok
    assert price_call(hour).cost == Decimal("0.06")  # $6/MTok


def test_writes_the_split_does_not_cover_are_priced_at_five_minutes():
    # 10,000 written, 4,000 of them reported as 1-hour: the other 6,000 are 5-minute.
    mixed = call(
        "claude-sonnet-4-20250514",
        cache_creation_tokens=10_000,
        cache_creation_1h_tokens=4_000,
    )
    assert price_call(mixed).cost == Decimal("0.0465")  # 6k x 3.75 + 4k x 6


def test_cache_reads_are_a_tenth_of_input():
    price = price_call(call("claude-haiku-4-5", cache_read_tokens=1_000_000))
    assert price.cost == Decimal("0.1")


def test_genai_usage_counts_cache_tokens_as_input():
    usage = to_genai_usage(
        call(
            "claude-opus-4-6",
            input_tokens=5,
            cache_creation_tokens=7,
            cache_creation_1h_tokens=2,
            cache_read_tokens=11,
            web_search_requests=3,
        )
    )
    assert usage.input_tokens == 23
    assert usage.cache_write_tokens == 7
    assert usage.cache_write_1h_tokens == 2
    assert usage.cache_read_tokens == 11
    assert usage.web_searches == 3


def test_more_one_hour_writes_than_writes_is_unpriced():
    bad = call(
        "claude-sonnet-4-5", cache_creation_tokens=10, cache_creation_1h_tokens=11
    )
    assert price_call(bad) == UNPRICED


# --- long context ------------------------------------------------------------------


def test_tier_is_decided_on_input_plus_cache_tokens():
    usage = dict(input_tokens=100_000, cache_read_tokens=150_000)
    price = price_call(call("claude-sonnet-4-5", **usage))
    assert price.cost == Decimal("0.69")  # 100k x $6 + 150k x $0.60


def test_exactly_200k_input_stays_at_the_base_rate():
    price = price_call(call("claude-sonnet-4-5", input_tokens=200_000))
    assert price.cost == Decimal("0.6")  # 200k x $3


# --- price history ----------------------------------------------------------------


def test_price_at_the_time_of_the_call():
    # genai-prices: Opus 4.6 had a >200k tier until 2026-03-13, flat pricing since.
    before = call(
        "claude-opus-4-6",
        datetime(2026, 3, 12, 23, 59, tzinfo=UTC),
        input_tokens=300_000,
    )
    after = call(
        "claude-opus-4-6", datetime(2026, 3, 13, tzinfo=UTC), input_tokens=300_000
    )
    assert price_call(before).cost == Decimal("3")  # 300k x $10
    assert price_call(after).cost == Decimal("1.5")  # 300k x $5


def test_day_of_a_call_is_its_utc_day():
    # 22:00 on 2026-03-12 in New York is 02:00 UTC on the 13th: the new price.
    local = datetime(2026, 3, 12, 22, tzinfo=timezone(timedelta(hours=-4)))
    price = price_call(call("claude-opus-4-6", local, input_tokens=300_000))
    assert price.cost == Decimal("1.5")


# --- service tiers ------------------------------------------------------------------


def test_batch_is_half_price_where_genai_prices_has_no_batch_rate():
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000, web_search_requests=1)
    price = price_call(call("claude-sonnet-4-20250514", service_tier="batch", **usage))
    # ($3 + $15) / 2, and web search has no batch rate: $0.01.
    assert price.cost == Decimal("9.01")
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-sonnet-4-0 batch*0.5"


def test_batch_uses_genai_prices_batch_rate_where_it_has_one():
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    price = price_call(
        call("claude-opus-4-6", LATE_2026, service_tier="batch", **usage)
    )
    assert price.cost == Decimal("15")  # $2.50 + $12.50
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-opus-4-6 batch"


def test_batch_halves_the_long_context_tier_too():
    usage = dict(input_tokens=250_000, output_tokens=1_000)
    price = price_call(call("claude-sonnet-4-5", service_tier="batch", **usage))
    assert price.cost == Decimal("0.76125")  # 1.5225 / 2


def test_standard_tier_is_the_list_price():
    price = price_call(
        call("claude-haiku-4-5", service_tier="standard", input_tokens=10)
    )
    assert price.cost == Decimal("0.00001")


def test_priority_tier_is_unpriced_without_a_contracted_rate():
    # Anthropic sells Priority Tier as committed capacity, with no per-token list price.
    usage = dict(input_tokens=1_000, output_tokens=1_000)
    assert (
        price_call(call("claude-sonnet-4-5", service_tier="priority", **usage))
        == UNPRICED
    )


def test_priority_tier_priced_by_an_override(monkeypatch, tmp_path):
    rate = {"input_mtok": "3.6", "output_mtok": "18"}
    entry = {"from": "2025-01-01", "variant": "priority", "prices": rate}
    write_overrides(monkeypatch, tmp_path, {"claude-sonnet-4-5": [entry]})
    usage = dict(input_tokens=100_000, output_tokens=100_000)
    price = price_call(
        call("claude-sonnet-4-5-20250929", service_tier="priority", **usage)
    )
    assert price.cost == Decimal("2.16")  # 100k x $3.60 + 100k x $18
    assert price.ref == "override claude-sonnet-4-5@2025-01-01 priority"
    # Standard calls of that model still get genai-prices' price.
    assert price_call(call("claude-sonnet-4-5", **usage)).cost == Decimal("1.8")


def test_unknown_service_tier_is_unpriced():
    assert (
        price_call(call("claude-haiku-4-5", service_tier="flex", input_tokens=5))
        == UNPRICED
    )


# --- inference geography -------------------------------------------------------------


def test_us_only_inference_costs_a_tenth_more():
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    price = price_call(call("claude-opus-4-6", LATE_2026, inference_geo="us", **usage))
    assert price.cost == Decimal("33")  # ($5 + $25) x 1.1
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-opus-4-6 us*1.1"


def test_us_multiplier_applies_to_tokens_not_to_web_search():
    usage = dict(input_tokens=1_000, cache_read_tokens=1_000, web_search_requests=1)
    price = price_call(call("claude-opus-5", LATE_2026, inference_geo="us", **usage))
    # (1k x $5 + 1k x $0.50) x 1.1 + $0.01
    assert price.cost == Decimal("0.01605")


@pytest.mark.parametrize("geo", [None, "", "global", "not_available"])
def test_global_or_unreported_geography_has_no_multiplier(geo):
    price = price_call(
        call("claude-opus-5", LATE_2026, inference_geo=geo, input_tokens=10)
    )
    assert price.cost == Decimal("0.00005")


def test_us_geography_on_a_model_without_it_is_unpriced():
    # Anthropic rejects inference_geo before Opus 4.6: a record saying "us" is suspect.
    assert (
        price_call(call("claude-sonnet-4-5", inference_geo="us", input_tokens=9))
        == UNPRICED
    )


# --- speed ------------------------------------------------------------------------


def test_fast_mode_uses_its_own_price():
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    price = price_call(call("claude-opus-5", LATE_2026, speed="fast", **usage))
    assert price.cost == Decimal("60")  # $10 + $50
    assert price.ref == "genai-prices 0.2.3 anthropic/claude-opus-5 fast"


def test_fast_mode_stacks_with_us_geography():
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    fast_us = call(
        "claude-opus-5", LATE_2026, speed="fast", inference_geo="us", **usage
    )
    assert price_call(fast_us).cost == Decimal("66")


def test_fast_mode_without_a_known_price_is_unpriced():
    # genai-prices has no fast price for Opus 4.6 or for Sonnet models.
    usage = dict(input_tokens=1_000)
    assert (
        price_call(call("claude-opus-4-6", LATE_2026, speed="fast", **usage))
        == UNPRICED
    )
    assert (
        price_call(call("claude-sonnet-5", LATE_2026, speed="fast", **usage))
        == UNPRICED
    )


def test_fast_mode_in_a_batch_is_unpriced():
    fast_batch = call("claude-opus-5", LATE_2026, speed="fast", service_tier="batch")
    assert price_call(fast_batch) == UNPRICED


# --- overrides ------------------------------------------------------------------------


def test_override_adds_a_model_from_its_date(monkeypatch, tmp_path):
    prices = {"input_mtok": "2", "output_mtok": "8", "cache_read_mtok": "0.2"}
    write_overrides(
        monkeypatch,
        tmp_path,
        {"claude-foo": [{"from": "2026-01-01", "prices": prices}]},
    )
    usage = dict(input_tokens=1_000_000, output_tokens=1_000_000)
    day_before = call("claude-foo", datetime(2025, 12, 31, 23, 59, tzinfo=UTC), **usage)
    on_the_day = call("claude-foo-20260101", datetime(2026, 1, 1, tzinfo=UTC), **usage)
    assert price_call(day_before) == UNPRICED
    assert price_call(on_the_day) == pricing.Price(
        cost=Decimal("10"), ref="override claude-foo@2026-01-01"
    )
    assert has_price("claude-foo")


def test_override_wins_over_genai_prices_from_its_date(monkeypatch, tmp_path):
    history = [
        {"from": "2026-05-01", "prices": {"input_mtok": "2", "output_mtok": "10"}},
        {"from": "2026-07-01", "prices": {"input_mtok": "1", "output_mtok": "10"}},
    ]
    write_overrides(monkeypatch, tmp_path, {"claude-sonnet-4-0": history})
    usage = dict(input_tokens=1_000_000)
    model = "claude-sonnet-4-20250514"
    april = price_call(call(model, datetime(2026, 4, 30, tzinfo=UTC), **usage))
    may = price_call(call(model, datetime(2026, 5, 1, tzinfo=UTC), **usage))
    july = price_call(call(model, datetime(2026, 7, 2, tzinfo=UTC), **usage))
    assert april == pricing.Price(
        Decimal("3"), "genai-prices 0.2.3 anthropic/claude-sonnet-4-0"
    )
    assert may == pricing.Price(Decimal("2"), "override claude-sonnet-4-0@2026-05-01")
    assert july == pricing.Price(Decimal("1"), "override claude-sonnet-4-0@2026-07-01")


def test_override_with_tiers_batch_and_geo(monkeypatch, tmp_path):
    tiered = {"base": "4", "tiers": [{"start": 200000, "price": "8"}]}
    entry = {
        "from": "2026-01-01",
        "prices": {"input_mtok": tiered, "output_mtok": "20"},
        "inference_geo": {"us": "1.1"},
    }
    write_overrides(monkeypatch, tmp_path, {"claude-bar": [entry]})
    usage = dict(input_tokens=250_000, service_tier="batch", inference_geo="us")
    price = price_call(call("claude-bar", LATE_2026, **usage))
    assert price.cost == Decimal("1.1")  # 250k x $8 / 2 x 1.1
    assert price.ref == "override claude-bar@2026-01-01 batch*0.5 us*1.1"


def test_overridden_model_without_a_fast_entry_is_unpriced_in_fast_mode(
    monkeypatch, tmp_path
):
    entry = {"from": "2026-01-01", "prices": {"input_mtok": "5", "output_mtok": "25"}}
    write_overrides(monkeypatch, tmp_path, {"claude-opus-5": [entry]})
    assert price_call(call("claude-opus-5", LATE_2026, speed="fast")) == UNPRICED


def test_shipped_overrides_file_has_no_effect(monkeypatch):
    monkeypatch.delenv(pricing.OVERRIDES_ENV)
    shipped = load_overrides(pricing.DEFAULT_OVERRIDES_PATH)
    assert shipped.entries == {}
    assert price_call(call("claude-example-1", input_tokens=5), shipped) == UNPRICED
    # The example in it is valid once copied into "models".
    raw = json.loads(pricing.DEFAULT_OVERRIDES_PATH.read_text())
    example = parse_overrides({"models": raw["_example"]})
    usage = dict(input_tokens=1_000_000, inference_geo="us")
    assert price_call(
        call("claude-example-1", LATE_2026, **usage), example
    ).cost == Decimal("3.3")


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"claude-x": [{"from": "2026-13-01", "prices": {}}]}, '"from" is a date'),
        (
            {"claude-x": [{"from": "2026-01-01", "prices": {"input_mtok": "1"}}]},
            "output",
        ),
        (
            {
                "claude-x": [
                    {
                        "from": "2026-01-01",
                        "prices": {"input_mtok": "0.00001", "output_mtok": "1"},
                    }
                ]
            },
            "places",
        ),
        ({"claude-x": [{"from": "2026-01-01", "prices": {"in_mtok": "1"}}]}, "unknown"),
        (
            {"claude-x": [{"from": "2026-01-01", "variant": "flex", "prices": {}}]},
            "variant",
        ),
    ],
)
def test_bad_overrides_are_refused_with_the_place(models, message):
    with pytest.raises(OverridesError, match=message) as error:
        parse_overrides({"models": models}, "my.json")
    assert "my.json: models.claude-x" in str(error.value)


def test_overrides_file_named_by_env_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(tmp_path / "missing.json"))
    reload_overrides()
    with pytest.raises(OverridesError, match="missing.json does not exist"):
        load_overrides()


# --- money --------------------------------------------------------------------------


def test_price_ref_fits_the_ledger_column():
    price = price_call(call("claude-sonnet-4-5", input_tokens=1))
    assert price.ref.startswith(f"genai-prices {pricing.GENAI_PRICES_VERSION} ")
    assert len(price.ref) <= 255


# Rates in picodollars per token (USD per MTok x 10^6) and per search, from
# Anthropic's price list, typed in by hand: this test does not read genai-prices.
PICO = {
    "claude-sonnet-4-20250514": (3_000_000, 3_750_000, 6_000_000, 300_000, 15_000_000),
    "claude-haiku-4-5-20251001": (1_000_000, 1_250_000, 2_000_000, 100_000, 5_000_000),
    "claude-3-5-haiku-20241022": (800_000, 1_000_000, 1_600_000, 80_000, 4_000_000),
}
# Opus 4.6 before 2026-03-13: every rate doubles (output x1.5) above 200k input.
OPUS_46 = (5_000_000, 6_250_000, 10_000_000, 500_000, 25_000_000)
OPUS_46_LONG = (10_000_000, 12_500_000, 20_000_000, 1_000_000, 37_500_000)
PICO_PER_SEARCH = 10_000_000_000


def random_call(rng, i):
    model = rng.choice([*PICO, "claude-opus-4-6"])
    written = rng.randrange(0, 120_000)
    return CallUsage(
        message_id=f"msg_{i}",
        user_id=1,
        session_id="s",
        model=model,
        occurred_at=datetime(2026, 2, 11, tzinfo=UTC),
        input_tokens=rng.randrange(0, 150_000),
        output_tokens=rng.randrange(0, 40_000),
        cache_creation_tokens=written,
        cache_creation_1h_tokens=rng.randrange(0, written + 1),
        cache_read_tokens=rng.randrange(0, 120_000),
        web_search_requests=rng.choice([0, 0, 0, 1, 3]),
    )


def picodollars(c):
    rates = PICO.get(c.model)
    if rates is None:
        prompt = c.input_tokens + c.cache_creation_tokens + c.cache_read_tokens
        rates = OPUS_46_LONG if prompt > 200_000 else OPUS_46
    inp, write_5m, write_1h, read, out = rates
    five_minute = c.cache_creation_tokens - c.cache_creation_1h_tokens
    return (
        c.input_tokens * inp
        + five_minute * write_5m
        + c.cache_creation_1h_tokens * write_1h
        + c.cache_read_tokens * read
        + c.output_tokens * out
        + c.web_search_requests * PICO_PER_SEARCH
    )


def test_money_over_100k_records_sums_exactly():
    rng = random.Random(20260211)
    calls = [random_call(rng, i) for i in range(100_000)]
    costs = [price_call(c).cost for c in calls]

    assert all(cost.as_tuple().exponent >= -12 for cost in costs)
    assert sum(costs, Decimal(0)) == Decimal(sum(map(picodollars, calls))).scaleb(-12)
    # Some Opus 4.6 calls crossed the long-context tier, so the tier was summed too.
    assert any(
        c.model == "claude-opus-4-6"
        and c.input_tokens + c.cache_creation_tokens + c.cache_read_tokens > 200_000
        for c in calls
    )
