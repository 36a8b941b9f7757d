"""Per-token rates, priced once per model, day, variant and long-context tier.

Within one such group a call's cost is linear in each kind of token, so it is the
sum of each count times that kind's price of one token. Those rates come from
``price_call`` itself, on probe calls with the same input total (and so the same
tier); the ledger then prices a batch without running genai-prices per record.
"""

from bisect import bisect_left
from dataclasses import dataclass, replace
from decimal import Decimal

from app.usage.pricing import (
    Price,
    load_overrides,
    price_call,
    tier_starts,
    utc_day,
)

# Groups one process keeps; models priced by the hour add a group per call time.
MAX_GROUPS = 10_000
_shared = None


@dataclass(frozen=True)
class _Rates:
    ref: str
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal
    web_search: Decimal


def shared_rates():
    """This process's ``RateCache``, begun afresh when the price overrides are
    reloaded (``flask usage reprice``) or when it has grown large."""
    global _shared
    overrides = load_overrides()
    if _shared is None or _shared.overrides is not overrides or _shared.full:
        _shared = RateCache(overrides)
    return _shared


class RateCache:
    """Prices calls like ``price_call`` does, from rates priced once per group."""

    def __init__(self, overrides=None):
        self.overrides = overrides
        self._rates = {}
        self._tiers = {}

    @property
    def full(self):
        return len(self._rates) >= MAX_GROUPS

    def price(self, call):
        total_input = _total_input(call)
        if total_input == 0:
            return price_call(call)
        key = self._key(call, total_input)
        if key not in self._rates:
            self._rates[key] = _rates_for(call, total_input)
        rates = self._rates[key]
        if rates is None:
            return price_call(call)  # unpriced or not linear: the slow, sure way
        return Price(cost=_cost(rates, call), ref=rates.ref)

    def _key(self, call, total_input):
        if call.model not in self._tiers:
            self._tiers[call.model] = tier_starts(call.model)
        starts, timed = self._tiers[call.model]
        where = bisect_left(starts, total_input)
        on_start = where < len(starts) and starts[where] == total_input
        when = call.occurred_at if timed else utc_day(call.occurred_at)
        variant = (call.service_tier, call.inference_geo, call.speed)
        return call.model, when, variant, where, on_start


def _total_input(call):
    return call.input_tokens + call.cache_creation_tokens + call.cache_read_tokens


def _cost(rates, call):
    write_5m = call.cache_creation_tokens - call.cache_creation_1h_tokens
    return (
        rates.input * call.input_tokens
        + rates.cache_write_5m * write_5m
        + rates.cache_write_1h * call.cache_creation_1h_tokens
        + rates.cache_read * call.cache_read_tokens
        + rates.output * call.output_tokens
        + rates.web_search * call.web_search_requests
    )


def _rates_for(call, total):
    """One token's price of each kind, from probes with ``total`` input tokens."""
    bare = replace(
        call,
        input_tokens=total,
        output_tokens=0,
        cache_creation_tokens=0,
        cache_creation_1h_tokens=0,
        cache_read_tokens=0,
        web_search_requests=0,
    )
    base = price_call(bare)
    if not base.priced:
        return None
    one_input = base.cost / total

    def swap(**kinds):
        probe = price_call(replace(bare, input_tokens=total - 1, **kinds))
        return None if not probe.priced else probe.cost - one_input * (total - 1)

    def extra(**kinds):
        probe = price_call(replace(bare, **kinds))
        return None if not probe.priced else probe.cost - base.cost

    rates = [
        swap(cache_creation_tokens=1),
        swap(cache_creation_tokens=1, cache_creation_1h_tokens=1),
        swap(cache_read_tokens=1),
        extra(output_tokens=1),
        extra(web_search_requests=1),
    ]
    if any(rate is None for rate in rates) or one_input * total != base.cost:
        return None
    return _Rates(base.ref, one_input, *rates)
