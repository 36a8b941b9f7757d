"""``flask users …``: local accounts."""

from flask.cli import AppGroup

users_cli = AppGroup("users", help="Local accounts.")
