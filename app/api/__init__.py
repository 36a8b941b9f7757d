"""The JSON API for usage, scoped to the signed-in user."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")
