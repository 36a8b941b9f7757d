"""Prices from the pinned genai-prices snapshot, used offline, plus Tally's rules.

Anthropic reports ``input_tokens`` without the cache tokens; genai-prices counts
cache writes and reads inside its ``input_tokens``. ``to_genai_usage`` is the one
place that maps one to the other. Cache writes the 5m/1h split does not cover are
priced at the 5-minute rate, and the long-context tier is chosen on input + cache
writes + cache reads and applied to every token of the call (genai-prices does
both from that mapping).

A price is resolved in this order: a local override active on the day of the call,
then genai-prices as of the day of the call; then the call's service tier, speed
and inference geography adjust it. Whatever cannot be priced with certainty stays
unpriced (cost None): never $0 and never the price of a look-alike model.
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from functools import lru_cache
from pathlib import Path

import genai_prices
from genai_prices import Usage
from genai_prices.data import providers as bundled_providers
from genai_prices.types import (
    ClauseEquals,
    ClauseOr,
    ClauseRegex,
    ClauseStartsWith,
    ModelPrice,
    Tier,
    TieredPrices,
    TimeOfDateConstraint,
)

log = logging.getLogger(__name__)

PROVIDER = "anthropic"
GENAI_PRICES_VERSION = genai_prices.__version__
DEFAULT_CONTEXT_WINDOW = 200_000
MONEY_PLACES = 12
MAX_REF_LENGTH = 255
OVERRIDES_ENV = "TALLY_PRICE_OVERRIDES"
DEFAULT_OVERRIDES_PATH = Path(__file__).with_name("price_overrides.json")

TOKEN_PRICE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "cache_read_mtok",
)
PRICE_KEYS = (*TOKEN_PRICE_KEYS, "web_searches_kcount")

# Anthropic reports these when nothing changes the standard price.
NEUTRAL_TIERS = {None, "", "standard"}
NEUTRAL_GEOS = {None, "", "global", "not_available"}
NEUTRAL_SPEEDS = {None, "", "standard"}
VARIANTS = ("standard", "batch", "priority", "fast")

# Batch is 50% of every token price; web search has no batch rate.
# https://platform.claude.com/docs/en/build-with-claude/batch-processing#pricing
BATCH_FACTOR = Decimal("0.5")

# US-only inference costs 1.1x on every token category of Opus 4.6 and later.
# https://platform.claude.com/docs/en/api/service-tiers
US_GEO_FACTOR = Decimal("1.1")
US_GEO_MODELS = frozenset(
    {
        "claude-opus-4-6",
        "claude-sonnet-4-6",
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-opus-5",
        "claude-opus-5-5",
        "claude-sonnet-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
        "claude-fable-5",
        "claude-fable-5-1",
        "claude-fable-5-2",
        "claude-mythos-5-2",
    }
)

# Suffixes that name a snapshot of a model, not another model.
_SNAPSHOT_SUFFIX = re.compile(r"(-\d{8}|@\d{8}|-\d{4}-\d{2}-\d{2}|-latest|-v\d+:\d+)$")
_MAX_PRICE_PLACES = 4


class OverridesError(ValueError):
    """The price overrides file cannot be used; the message names the fix."""


class _Unpriced(Exception):
    """Why a call stays unpriced; logged once by ``price_call``."""


@dataclass(frozen=True)
class Price:
    """The cost of one call and the price it was computed with."""

    cost: Decimal | None
    ref: str | None

    @property
    def priced(self):
        return self.cost is not None


UNPRICED = Price(cost=None, ref=None)


@dataclass(frozen=True)
class OverrideEntry:
    """Prices for one model and variant from one day on, from the overrides file."""

    model: str
    start: date
    prices: ModelPrice
    variant: str = "standard"
    geo: dict = field(default_factory=dict)

    @property
    def ref(self):
        ref = f"override {self.model}@{self.start.isoformat()}"
        return ref if self.variant == "standard" else f"{ref} {self.variant}"


@dataclass(frozen=True)
class Overrides:
    """Every override entry, by (model, variant), oldest first."""

    entries: dict = field(default_factory=dict)
    path: str | None = None

    def find(self, model_ref, variant, day):
        for name in _ref_names(model_ref):
            history = self.entries.get((name, variant), ())
            active = [entry for entry in history if entry.start <= day]
            if active:
                return active[-1]
        return None

    def covers(self, model_ref):
        names = set(_ref_names(model_ref))
        return any(model in names for model, _ in self.entries)


NO_OVERRIDES = Overrides()


def to_genai_usage(call):
    cache_tokens = call.cache_creation_tokens + call.cache_read_tokens
    return Usage(
        input_tokens=call.input_tokens + cache_tokens,
        output_tokens=call.output_tokens,
        cache_write_tokens=call.cache_creation_tokens,
        cache_write_1h_tokens=call.cache_creation_1h_tokens,
        cache_read_tokens=call.cache_read_tokens,
        web_searches=call.web_search_requests,
    )


def price_call(call, overrides=None):
    """Price a ``CallUsage`` at the time it happened; unknown models stay unpriced."""
    if overrides is None:
        overrides = load_overrides()
    try:
        model_price, ref = _resolve(call, overrides)
        cost = _calc_cost(model_price, call)
    except _Unpriced as reason:
        log.warning("call %s: %s; recorded unpriced", call.message_id, reason)
        return UNPRICED
    return Price(cost=cost, ref=ref[:MAX_REF_LENGTH])


def _resolve(call, overrides):
    """The ``ModelPrice`` for a call and a ref naming where it came from."""
    variant = _variant(call)
    day = utc_day(call.occurred_at)
    override = _override_price(call.model, variant, day, overrides)
    if override is not None:
        model_price, ref, entry = override
    else:
        model_price, ref = _genai_price(call, variant)
        entry = None
    factor = _geo_factor(call, entry)
    if factor is not None:
        model_price = scale_prices(model_price, factor)
        ref = f"{ref} {call.inference_geo}*{factor}"
    return model_price, ref


@lru_cache(maxsize=512)
def find_model(model_ref):
    """The genai-prices model for an Anthropic model id, or None when it has none.

    genai-prices matches on prefixes, so "claude-opus-4-10" would get the price of
    Opus 4.1; a match counts only when the id, less a snapshot suffix, is one of
    the names the model is listed under.
    """
    ref = model_ref.strip().lower()
    model = _provider().find_model(ref)
    if model is None or not _names_model(model, ref):
        return None
    return model


def has_price(model_ref, overrides=None):
    """Whether calls to this model can be priced (by genai-prices or an override)."""
    if overrides is None:
        overrides = load_overrides()
    return find_model(model_ref) is not None or overrides.covers(model_ref)


def context_window(model_ref):
    model = find_model(model_ref)
    if model is None or not model.context_window:
        return DEFAULT_CONTEXT_WINDOW
    return model.context_window


def scale_prices(model_price, factor):
    """A copy of ``model_price`` with every token price times ``factor``."""
    values = {}
    for key, value in _price_items(model_price):
        if key in TOKEN_PRICE_KEYS:
            value = _scale(value, factor)
        values[key] = value
    return ModelPrice(**values)


def utc_day(moment):
    """The UTC date of a timestamp; naive ones are UTC, as in genai-prices."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


def overrides_path():
    return Path(os.environ.get(OVERRIDES_ENV) or DEFAULT_OVERRIDES_PATH)


def load_overrides(path=None):
    """The overrides file's entries; cached per path, ``reload_overrides`` rereads."""
    explicit = path is not None or bool(os.environ.get(OVERRIDES_ENV))
    path = Path(path) if path is not None else overrides_path()
    return _load_overrides(str(path), explicit=explicit)


def reload_overrides():
    _load_overrides.cache_clear()


@lru_cache(maxsize=8)
def _load_overrides(path, explicit):
    if not Path(path).exists():
        if explicit:
            raise OverridesError(f"{path} does not exist: create it or set another")
        return NO_OVERRIDES
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"), parse_float=Decimal)
    except ValueError as exc:
        raise OverridesError(f"{path} is not valid JSON ({exc}): fix it") from None
    return parse_overrides(raw, path)


def parse_overrides(raw, path="overrides"):
    """Check an overrides document and turn it into ``Overrides``."""
    models = raw.get("models", {}) if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise OverridesError(f'{path}: the top level needs a "models" object')
    entries = {}
    for model, history in models.items():
        for entry in _parse_history(model, history, path):
            entries.setdefault((entry.model, entry.variant), []).append(entry)
    for key, history in entries.items():
        history.sort(key=lambda entry: entry.start)
        _check_unique_starts(key, history, path)
    return Overrides(entries={k: tuple(v) for k, v in entries.items()}, path=path)


def _parse_history(model, history, path):
    where = f"{path}: models.{model}"
    if not isinstance(model, str) or not 0 < len(model) <= 128:
        raise OverridesError(f"{where}: a model id is 1 to 128 characters")
    if not isinstance(history, list) or not history:
        raise OverridesError(f'{where}: give a list of {{"from": ..., "prices": ...}}')
    return [
        _parse_entry(model.lower(), item, f"{where}[{i}]")
        for i, item in enumerate(history)
    ]


def _parse_entry(model, item, where):
    if not isinstance(item, dict):
        raise OverridesError(f"{where}: an entry is an object")
    unknown = set(item) - {"from", "prices", "variant", "inference_geo", "note"}
    if unknown:
        raise OverridesError(f"{where}: unknown keys {sorted(unknown)}")
    variant = item.get("variant", "standard")
    if variant not in VARIANTS:
        raise OverridesError(f"{where}: variant is one of {', '.join(VARIANTS)}")
    return OverrideEntry(
        model=model,
        start=_parse_day(item.get("from"), where),
        prices=_parse_prices(item.get("prices"), where),
        variant=variant,
        geo=_parse_geo(item.get("inference_geo", {}), where),
    )


def _parse_day(value, where):
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise OverridesError(f'{where}: "from" is a date like "2026-01-01"') from None


def _parse_prices(prices, where):
    if not isinstance(prices, dict):
        raise OverridesError(f'{where}: "prices" is an object of $ per MTok')
    unknown = set(prices) - set(PRICE_KEYS)
    if unknown:
        raise OverridesError(f"{where}: unknown price keys {sorted(unknown)}")
    for required in ("input_mtok", "output_mtok"):
        if required not in prices:
            raise OverridesError(f"{where}: prices need {required}")
    return ModelPrice(**{k: _parse_price(v, f"{where}.{k}") for k, v in prices.items()})


def _parse_price(value, where):
    if isinstance(value, dict):
        return _parse_tiers(value, where)
    return _parse_flat(value, where)


def _parse_flat(value, where):
    amount = _parse_amount(value, where)
    if amount.as_tuple().exponent < -_MAX_PRICE_PLACES:
        # Keeps every cost, after batch and geo factors, within the ledger's places.
        raise OverridesError(f"{where}: at most {_MAX_PRICE_PLACES} decimal places")
    return amount


def _parse_amount(value, where):
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise OverridesError(f'{where}: write a price as a string like "3.75"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise OverridesError(f"{where}: {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise OverridesError(f"{where}: a price is a number >= 0")
    return amount


def _parse_tiers(value, where):
    tiers = value.get("tiers")
    if set(value) != {"base", "tiers"} or not isinstance(tiers, list) or not tiers:
        raise OverridesError(
            f'{where}: tiered prices are {{"base": ..., "tiers": [...]}}'
        )
    parsed = []
    for i, tier in enumerate(tiers):
        start = tier.get("start") if isinstance(tier, dict) else None
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise OverridesError(f"{where}.tiers[{i}]: start is a whole token count")
        parsed.append(Tier(start=start, price=_parse_flat(tier.get("price"), where)))
    return TieredPrices(base=_parse_flat(value["base"], where), tiers=parsed)


def _parse_geo(value, where):
    if not isinstance(value, dict):
        raise OverridesError(f'{where}: inference_geo is like {{"us": "1.1"}}')
    return {
        geo: _parse_amount(v, f"{where}.inference_geo.{geo}")
        for geo, v in value.items()
    }


def _check_unique_starts(key, history, path):
    starts = [entry.start for entry in history]
    if len(set(starts)) != len(starts):
        raise OverridesError(
            f"{path}: models.{key[0]} has two {key[1]} entries on one day"
        )


def _variant(call):
    tier, speed = call.service_tier, call.speed
    if tier not in NEUTRAL_TIERS | {"batch", "priority"}:
        raise _Unpriced(f"service tier {tier!r} has no known price")
    if speed not in NEUTRAL_SPEEDS | {"fast"}:
        raise _Unpriced(f"speed {speed!r} has no known price")
    if speed == "fast" and tier not in NEUTRAL_TIERS:
        raise _Unpriced(f"Anthropic has no price for fast mode on the {tier} tier")
    if speed == "fast":
        return "fast"
    return "standard" if tier in NEUTRAL_TIERS else tier


def _override_price(model_ref, variant, day, overrides):
    entry = overrides.find(model_ref, variant, day)
    if entry is not None:
        return entry.prices, entry.ref, entry
    standard = overrides.find(model_ref, "standard", day)
    if standard is None:
        return None
    if variant != "batch":
        raise _Unpriced(f"{standard.ref} has no {variant} entry: add one to price it")
    return (
        scale_prices(standard.prices, BATCH_FACTOR),
        f"{standard.ref} batch*0.5",
        standard,
    )


def _genai_price(call, variant):
    model = find_model(call.model)
    if model is None:
        raise _Unpriced(f"model {call.model!r} has no price")
    ref = f"genai-prices {GENAI_PRICES_VERSION} {PROVIDER}/{model.id}"
    standard = model.get_prices(call.occurred_at)
    if variant == "standard":
        return standard, ref
    context = {"batch": {"processing": "batch"}, "fast": {"speed": "fast"}}.get(variant)
    if context and _has_variant(model, context, call.occurred_at):
        return model.get_prices(call.occurred_at, context), f"{ref} {variant}"
    if variant == "batch":
        return scale_prices(standard, BATCH_FACTOR), f"{ref} batch*0.5"
    raise _Unpriced(f"Anthropic publishes no {variant} price for {model.id}")


def _has_variant(model, context, when):
    for variant in model.price_variants or ():
        active = variant.constraint is None or variant.constraint.active(when)
        if active and variant.when == context:
            return True
    return False


def _geo_factor(call, entry):
    geo = call.inference_geo
    if geo in NEUTRAL_GEOS:
        return None
    if entry is not None and geo in entry.geo:
        return entry.geo[geo]
    model = find_model(call.model)
    if geo == "us" and model is not None and model.id in US_GEO_MODELS:
        return US_GEO_FACTOR
    raise _Unpriced(f"inference geo {geo!r} has no known price on {call.model}")


def _calc_cost(model_price, call):
    _check_priced_units(model_price, call)
    if call.cache_creation_1h_tokens > call.cache_creation_tokens:
        raise _Unpriced("1-hour cache writes exceed all cache writes")
    with localcontext() as ctx:
        # Money is exact: any rounding raises instead of changing a cent.
        ctx.prec = 60
        ctx.traps[Inexact] = True
        try:
            total = model_price.calc_price(to_genai_usage(call))["total_price"]
            return _exact(total)
        except (ArithmeticError, ValueError) as exc:
            raise _Unpriced(f"the cost cannot be computed exactly: {exc}") from None


def _check_priced_units(model_price, call):
    needed = {
        "input_mtok": call.input_tokens,
        "output_mtok": call.output_tokens,
        "cache_write_mtok": call.cache_creation_tokens - call.cache_creation_1h_tokens,
        "cache_write_1h_mtok": call.cache_creation_1h_tokens,
        "cache_read_mtok": call.cache_read_tokens,
        "web_searches_kcount": call.web_search_requests,
    }
    prices = dict(_price_items(model_price))
    for key, count in needed.items():
        if count and prices.get(key) is None:
            raise _Unpriced(f"the price has no {key} for {count} units")
    unknown = set(prices) - set(PRICE_KEYS)
    if unknown:
        raise _Unpriced(f"the price has units Tally does not know: {sorted(unknown)}")


def _exact(total):
    """``total`` without trailing zeros, checked to fit the ledger's places."""
    if total == total.to_integral_value():
        return total.quantize(Decimal(1))
    total = total.normalize()
    if total.as_tuple().exponent < -MONEY_PLACES:
        raise _Unpriced(f"cost {total} has more than {MONEY_PLACES} decimal places")
    return total


def _price_items(model_price):
    for key, value in model_price.__dict__.items():
        if not key.startswith("_") and value is not None:
            yield key, value


def _scale(value, factor):
    if isinstance(value, TieredPrices):
        tiers = [Tier(start=t.start, price=t.price * factor) for t in value.tiers]
        return TieredPrices(base=value.base * factor, tiers=tiers)
    return value * factor


def _ref_names(model_ref):
    """Names an override may use for a model: the id, less its snapshot, genai's id."""
    ref = model_ref.strip().lower()
    names = dict.fromkeys((ref, _base_ref(ref)))
    model = find_model(ref)
    if model is not None:
        names[model.id] = None
    return tuple(names)


def _base_ref(ref):
    while (stripped := _SNAPSHOT_SUFFIX.sub("", ref)) != ref:
        ref = stripped
    return ref


def _names_model(model, ref):
    names, patterns = _clause_names(model.match)
    if ref in names or _base_ref(ref) in names | {model.id}:
        return True
    return any(re.search(pattern, ref) for pattern in patterns)


def _clause_names(clause):
    if isinstance(clause, ClauseOr):
        names, patterns = set(), []
        for inner in clause.or_:
            more_names, more_patterns = _clause_names(inner)
            names |= more_names
            patterns += more_patterns
        return names, patterns
    if isinstance(clause, ClauseStartsWith):
        return {clause.starts_with.lower()}, []
    if isinstance(clause, ClauseEquals):
        return {clause.equals.lower()}, []
    if isinstance(clause, ClauseRegex):
        return set(), [clause.regex]
    return set(), []


@lru_cache(maxsize=1)
def _provider():
    # The bundled data, never a snapshot fetched by genai-prices' updater.
    return next(p for p in bundled_providers if p.id == PROVIDER)


MAX_DEPTH = 12


def tier_starts(model):
    """Input counts where a price of ``model`` may change tier, sorted, and whether
    any price depends on the time of day: from its genai-prices entry and from
    every override, so a superset of the starts that apply to it."""
    starts, timed = set(), []
    _walk(find_model(model), starts, timed, 0)
    _walk(load_overrides(), starts, timed, 0)
    return sorted(starts), bool(timed)


def _walk(value, starts, timed, depth):
    if depth > MAX_DEPTH or value is None or isinstance(value, str | int | Decimal):
        return
    if isinstance(value, Tier):
        starts.add(value.start)
    elif isinstance(value, TimeOfDateConstraint):
        timed.append(value)
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, list | tuple):
        children = value
    else:
        children = list(getattr(value, "__dict__", {}).values())
    for child in children:
        _walk(child, starts, timed, depth + 1)
