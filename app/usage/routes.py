"""Health of the save path."""

import logging

from flask import Blueprint, current_app, jsonify
from sqlalchemy.exc import DBAPIError

from app.db import unit_of_work
from app.usage import outbox

log = logging.getLogger(__name__)
bp = Blueprint("usage", __name__)


@bp.get("/health")
def health():
    spooled = current_app.extensions["tally.spool"].depth()
    try:
        with unit_of_work(current_app.extensions["tally.db"]) as session:
            figures = outbox.health(session)
    except DBAPIError as exc:
        # Exactly when the spool's count matters most: say so, do not fail.
        log.warning("health: the database is unavailable: %s", exc)
        return jsonify(status="database_unavailable", spooled=spooled), 503
    return jsonify(status="ok", spooled=spooled, **figures)
