"""Tally's web side: the application factory."""

import logging
import threading

import anthropic
from flask import Flask, jsonify

from app import config
from app.chat.frames import Flusher
from app.chat.guard import TokenGuard
from app.chat.saves import SaveWatcher
from app.db import make_engine, make_session_factory
from app.extensions import jwt, sock
from app.usage.outbox import Relay
from app.usage.spool import Spool

log = logging.getLogger(__name__)


def create_app(settings=None, *, celery=None):
    """Build the Flask app; ``settings`` defaults to the environment's."""
    settings = settings or config.load()
    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret,
        JWT_TOKEN_LOCATION=["headers"],
        MAX_CONTENT_LENGTH=settings.max_message_bytes,
        SOCK_SERVER_OPTIONS={
            # The protocol's hard cap; a chat text over max_message_bytes gets a
            # clear error frame instead, and the socket stays open.
            "max_message_size": 4 * settings.max_message_bytes + 4096,
            "ping_interval": 25,
        },
    )
    app.extensions["tally.settings"] = settings
    engine = make_engine(settings.database_url)
    app.extensions["tally.db"] = make_session_factory(engine)
    app.extensions["tally.claude"] = claude_client(settings)
    app.extensions["tally.spool"] = Spool(settings.data_dir / "spool")
    app.extensions["tally.flusher"] = Flusher(settings.text_frame_ms / 1000)
    app.extensions["tally.saves"] = SaveWatcher(app.extensions["tally.db"])
    app.extensions["tally.guard"] = TokenGuard(app.extensions["tally.db"])
    app.extensions["tally.stopping"] = threading.Event()  # see app.stopping
    if celery is not None:
        _attach_relay(app, celery, settings)
    jwt.init_app(app)
    sock.init_app(app)
    _register(app)
    return app


def _register(app):
    from app.api import bp as api_bp
    from app.auth.cli import users_cli
    from app.auth.routes import bp as auth_bp
    from app.chat.api import bp as chats_bp
    from app.chat.routes import bp as chat_bp
    from app.dashboard import bp as dashboard_bp
    from app.usage.cli import usage_cli
    from app.usage.routes import bp as usage_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(chat_bp)
    app.register_blueprint(chats_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(usage_bp)
    app.cli.add_command(usage_cli)
    app.cli.add_command(users_cli)

    @app.errorhandler(413)
    def too_large(_error):
        return jsonify(error="request too large"), 413


def _attach_relay(app, celery, settings):
    from celery_app import SAVE_USAGE

    def send(records):
        celery.send_task(SAVE_USAGE, args=[records])

    relay = Relay(
        app.extensions["tally.db"],
        send,
        interval=settings.outbox_relay_seconds,
        resend_after=settings.outbox_resend_seconds,
        spool=app.extensions["tally.spool"],
    )
    app.extensions["tally.relay"] = relay
    # wsgi.py starts it in a served process; this covers servers that import
    # the app another way. `flask usage …` needs no thread.
    app.before_request(relay.start)


def claude_client(settings):
    """The Anthropic client: the real API with a key, the simulator without one."""
    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key or "simulated",
        base_url=settings.anthropic_base_url,
        max_retries=2,
    )
