"""The usage page and the Prometheus metrics: what people and monitors look at."""

from flask import Blueprint

bp = Blueprint("dashboard", __name__)

# The route modules attach themselves to ``bp``.
from app.dashboard import metrics, routes  # noqa: E402, F401
