"""Health of the save path."""

from flask import Blueprint, current_app, jsonify

from app.db import unit_of_work
from app.usage import outbox

bp = Blueprint("usage", __name__)


@bp.get("/health")
def health():
    with unit_of_work(current_app.extensions["tally.db"]) as session:
        figures = outbox.health(session)
    spooled = current_app.extensions["tally.spool"].depth()
    return jsonify(status="ok", spooled=spooled, **figures)
