"""The JSON API for usage, scoped to the signed-in user."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")

# The route modules attach themselves to ``bp``.
from app.api import openapi, routes, savings  # noqa: E402, F401
