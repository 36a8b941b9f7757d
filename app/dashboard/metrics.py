"""Prometheus metrics at /metrics, read from the database at each scrape.

Figures for the whole installation only: no label names a user or a session.
They still tell what the installation spends, so a scraper shows the bearer
token ``TALLY_METRICS_TOKEN``; without one set, the route is open in development
and closed in production. Money is a float here for Prometheus' sake; the exact
amounts stay in the database and the JSON API.
"""

import hmac
from datetime import UTC, datetime
from decimal import Decimal

from flask import Response, current_app, request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from app.auth.access import error_response
from app.dashboard import bp
from app.db import unit_of_work
from app.models import UsageRecord
from app.usage import outbox

GAUGES = {
    "tally_usage_records_total": "Usage records in the ledger.",
    "tally_usage_records_partial_total": "Ledger records of calls whose stream "
    "broke off.",
    "tally_usage_unpriced_total": "Ledger records without a price.",
    "tally_dead_letters": "Dead letters not replayed yet (flask usage replay).",
    "tally_outbox_depth": "Usage records in the outbox, not saved yet.",
    "tally_oldest_unsaved_seconds": "Age of the oldest outbox entry; 0 when empty.",
    "tally_cost_usd_total": "Cost of the ledger in US dollars (informational "
    "float; exact amounts are in the database).",
}


def figures(session, now):
    """Each gauge's value, from the ledger and the outbox, at ``now``."""
    records, partial, unpriced, cost = session.execute(
        select(
            func.count(UsageRecord.id),
            func.count(UsageRecord.id).filter(UsageRecord.partial.is_(True)),
            func.count(UsageRecord.id).filter(UsageRecord.cost.is_(None)),
            func.sum(UsageRecord.cost),
        )
    ).one()
    health = outbox.health(session, now)
    return {
        "tally_usage_records_total": records,
        "tally_usage_records_partial_total": partial,
        "tally_usage_unpriced_total": unpriced,
        "tally_dead_letters": health["dead_letters"],
        "tally_outbox_depth": health["outbox_depth"],
        "tally_oldest_unsaved_seconds": health["oldest_unsaved_seconds"],
        "tally_cost_usd_total": float(Decimal(cost or 0)),
    }


class TallyCollector(Collector):
    """Reads ``figures`` at every scrape; ``clock`` gives the time of the scrape."""

    def __init__(self, session_factory, clock=None):
        self.session_factory = session_factory
        self.clock = clock or (lambda: datetime.now(UTC))

    def describe(self):
        # Lets the registry learn the names without a query at registration.
        return [GaugeMetricFamily(name, text) for name, text in GAUGES.items()]

    def collect(self):
        with unit_of_work(self.session_factory) as session:
            values = figures(session, self.clock())
        for name, text in GAUGES.items():
            yield GaugeMetricFamily(name, text, value=values[name])


def make_registry(session_factory, clock=None):
    """A registry of Tally's gauges alone, one per app (tests build many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(session_factory, clock))
    return registry


@bp.record_once
def _set_up(state):
    app = state.app
    app.extensions["tally.metrics"] = make_registry(app.extensions["tally.db"])


@bp.get("/metrics")
def metrics():
    refusal = _refusal(current_app.extensions["tally.settings"])
    if refusal is not None:
        return refusal
    # Prometheus asks for OpenMetrics or the text format in its Accept header.
    encode, content_type = choose_encoder(request.headers.get("Accept"))
    body = encode(current_app.extensions["tally.metrics"])
    return Response(body, content_type=content_type)


def _refusal(settings):
    expected = settings.metrics_token
    if expected is None:
        if settings.development:
            return None
        return error_response(
            403, "set TALLY_METRICS_TOKEN and give it to the scraper as a bearer token"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        return None
    return error_response(401, "a bearer token (TALLY_METRICS_TOKEN) is required")
