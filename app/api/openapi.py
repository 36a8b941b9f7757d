"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json."""

from flask import current_app, jsonify

from app.api import bp
from app.chat.api import USAGE_FIELDS as CHAT_USAGE
from app.models import TOTAL_COUNTS

DEV_LOGIN = "/api/auth/dev-login"


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description, schema):
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _error(description):
    return _ok(description, _ref("Error"))


def _in_path(name):
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name, description, schema=None):
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


FILTERS = [
    _query(
        "since", "First day, YYYY-MM-DD, in tz.", {"type": "string", "format": "date"}
    ),
    _query(
        "until", "Last day, YYYY-MM-DD, in tz.", {"type": "string", "format": "date"}
    ),
    _query("tz", "IANA time zone the days are in; UTC by default."),
    _query("user", "Admins only: this user's usage; without it, everyone's."),
]
USER_ONLY = [FILTERS[2], FILTERS[3]]
LIMIT = _query(
    "limit",
    "At most this many sessions (1-1000, default 100).",
    {"type": "integer", "minimum": 1, "maximum": 1000},
)
SIGNED_IN = {
    "401": _error("No valid token: missing, expired, revoked or a disabled user."),
}
FILTERED = SIGNED_IN | {
    "400": _error("A filter is malformed."),
    "403": _error("user= names someone else and the caller is not an admin."),
    "404": _error("user= names no user."),
}

COUNTS = {name: {"type": "integer", "minimum": 0} for name in TOTAL_COUNTS}
TOTALS = {
    "type": "object",
    "description": "Calls, tokens and cost; unpriced calls add no cost.",
    "properties": COUNTS | {"cost": _ref("Money")},
    "required": [*COUNTS, "cost"],
}


def _with(extra, required):
    return {
        "allOf": [
            _ref("Totals"),
            {"type": "object", "properties": extra, "required": required},
        ]
    }


TIME = {"type": "string", "format": "date-time"}
NULLABLE_MONEY = {"oneOf": [_ref("Money"), {"type": "null"}]}
SCHEMAS = {
    "Chat": {
        "type": "object",
        "description": "A conversation; title and last_at only in the list.",
        "properties": {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "model": {"type": "string"},
            "started_at": TIME,
            "last_at": TIME,
            "calls": {"type": "integer", "minimum": 0},
            "cost": _ref("Money"),
        },
        "required": ["id", "model", "started_at", "calls", "cost"],
    },
    "Turn": {
        "type": "object",
        "description": "A user message or a reply; a reply's usage is null until "
        "the worker saved the call.",
        "properties": {
            "role": {"enum": ["user", "assistant"]},
            "text": {"type": "string"},
            "message_id": {"type": ["string", "null"]},
            "usage": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            **{
                                name: {"type": ["integer", "null"], "minimum": 0}
                                for name in CHAT_USAGE
                            },
                            "cost": NULLABLE_MONEY,
                            "partial": {"type": "boolean"},
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
        "required": ["role", "text", "message_id"],
    },
    "Money": {
        "type": "string",
        "pattern": r"^-?\d+\.\d{2,}$",
        "description": "US dollars, exact, at least two decimal places.",
        "examples": ["0.096746", "5.00"],
    },
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "User": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "role": {"enum": ["user", "admin"]},
        },
        "required": ["id", "username", "role"],
    },
    "Tokens": {
        "type": "object",
        "properties": {
            "access_token": {"type": "string"},
            "refresh_token": {"type": "string"},
            "user": _ref("User"),
        },
        "required": ["access_token", "refresh_token", "user"],
    },
    "Filters": {
        "type": "object",
        "properties": {
            "user": {"type": ["string", "null"]},
            "since": {"type": ["string", "null"], "format": "date"},
            "until": {"type": ["string", "null"], "format": "date"},
            "tz": {"type": "string"},
        },
    },
    "Totals": TOTALS,
    "Day": _with(
        {"day": {"type": "string", "format": "date"}, "username": {"type": "string"}},
        ["day", "username"],
    ),
    "Model": _with({"model": {"type": "string"}}, ["model"]),
    "Session": _with(
        {
            "session_id": {"type": "string"},
            "username": {"type": "string"},
            "first_at": {"oneOf": [TIME, {"type": "null"}]},
            "last_at": {"oneOf": [TIME, {"type": "null"}]},
        },
        ["session_id", "username", "first_at", "last_at"],
    ),
    "Call": {
        "type": "object",
        "description": "One billed Claude call of the ledger.",
        "properties": {
            "message_id": {"type": "string"},
            "request_id": {"type": "string"},
            "model": {"type": "string"},
            "occurred_at": TIME,
            **{
                name: {"type": "integer"}
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_tokens",
                    "cache_creation_1h_tokens",
                    "cache_read_tokens",
                    "web_search_requests",
                    "web_fetch_requests",
                )
            },
            "thinking_tokens": {"type": ["integer", "null"]},
            "service_tier": {"type": ["string", "null"]},
            "partial": {"type": "boolean"},
            "source": {"type": "string"},
            "cost": NULLABLE_MONEY,
        },
    },
    "Budget": {
        "type": "object",
        "description": "UTC day and month; a null limit means none.",
        "properties": {
            **{
                f"{period}_{part}": NULLABLE_MONEY
                for period in ("daily", "monthly")
                for part in ("limit", "left")
            },
            "daily_spent": _ref("Money"),
            "monthly_spent": _ref("Money"),
            "over": {"type": "boolean"},
        },
    },
}


def _get(summary, parameters, ok, errors=None):
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": parameters,
            "responses": {"200": ok} | (errors or FILTERED),
        }
    }


def _post(summary, body, ok, errors, security=True):
    operation = {"summary": summary, "responses": {"200": ok} | errors}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    operation["security"] = [{"bearer": []}] if security else []
    return {"post": operation}


def _listing(key, item):
    return {
        "type": "object",
        "properties": {
            "filters": _ref("Filters"),
            key: {"type": "array", "items": _ref(item)},
            "totals": _ref("Totals"),
        },
    }


CREDENTIALS = {
    "type": "object",
    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    "required": ["username", "password"],
}
PATHS = {
    "/api/auth/login": _post(
        "Sign in with a local account's password.",
        CREDENTIALS,
        _ok("An access and a refresh token.", _ref("Tokens")),
        {
            "400": _error("No username or password."),
            "401": _error("Wrong username or password."),
            "403": _error("The account is disabled."),
        },
        security=False,
    ),
    "/api/auth/refresh": _post(
        "A new access token; send the refresh token as the Bearer token.",
        None,
        _ok(
            "A new access token.",
            {
                "type": "object",
                "properties": {
                    "access_token": {"type": "string"},
                    "user": _ref("User"),
                },
            },
        ),
        SIGNED_IN,
    ),
    "/api/auth/logout": _post(
        "Revoke the Bearer token (access or refresh) and its refresh token.",
        None,
        _ok(
            "Revoked.",
            {"type": "object", "properties": {"revoked": {"type": "boolean"}}},
        ),
        SIGNED_IN,
    ),
    DEV_LOGIN: _post(
        "Development only: sign in by name alone. Absent in production.",
        {
            "type": "object",
            "properties": {"username": {"type": "string"}},
            "required": ["username"],
        },
        _ok("An access and a refresh token.", _ref("Tokens")),
        {"400": _error("Bad username."), "403": _error("The account is disabled.")},
        security=False,
    ),
    "/api/me": _get(
        "The signed-in user, the budget left and the chat limits.",
        [],
        _ok(
            "Who, budget and limits.",
            {
                "type": "object",
                "properties": {
                    "user": _ref("User"),
                    "budget": _ref("Budget"),
                    "limits": {
                        "type": "object",
                        "properties": {
                            "max_message_bytes": {"type": "integer"},
                            "chats_per_minute": {
                                "type": "integer",
                                "description": "0: no limit.",
                            },
                        },
                    },
                },
            },
        ),
        SIGNED_IN,
    ),
    "/api/usage/daily": _get(
        "Usage per day and user, oldest first.",
        FILTERS,
        _ok("Days and their totals.", _listing("days", "Day")),
    ),
    "/api/usage/models": _get(
        "Usage per model over the filtered days.",
        FILTERS,
        _ok("Models and their totals.", _listing("models", "Model")),
    ),
    "/api/usage/sessions": _get(
        "Sessions with calls in the filtered days, most recently used first.",
        [*FILTERS, LIMIT],
        _ok(
            "Sessions.",
            {
                "type": "object",
                "properties": {
                    "filters": _ref("Filters"),
                    "sessions": {"type": "array", "items": _ref("Session")},
                },
            },
        ),
    ),
    "/api/usage/sessions/{session_id}": _get(
        "One session's totals and calls; another user's session is a 404.",
        [
            _in_path("session_id"),
            *USER_ONLY,
        ],
        _ok(
            "The session and its calls in order.",
            {
                "type": "object",
                "properties": {
                    "session": _ref("Session"),
                    "calls": {"type": "array", "items": _ref("Call")},
                },
            },
        ),
        FILTERED | {"404": _error("No such session (or not yours).")},
    ),
    "/api/chats": _get(
        "The caller's own chats with at least one exchange, latest first.",
        [
            _query(
                "limit",
                "At most this many chats (1-200, default 20).",
                {"type": "integer", "minimum": 1, "maximum": 200},
            )
        ],
        _ok(
            "Chats.",
            {
                "type": "object",
                "properties": {"chats": {"type": "array", "items": _ref("Chat")}},
            },
        ),
        SIGNED_IN | {"400": _error("limit is malformed.")},
    ),
    "/api/chats/{chat_id}": _get(
        "One of the caller's chats, turn by turn, with each saved call's usage.",
        [_in_path("chat_id")],
        _ok(
            "The chat and its turns in order.",
            {
                "type": "object",
                "properties": {
                    "chat": _ref("Chat"),
                    "turns": {"type": "array", "items": _ref("Turn")},
                },
            },
        ),
        SIGNED_IN | {"404": _error("No such chat (or not yours).")},
    ),
    "/api/usage/savings": _get(
        "What cache reads saved against the full input price, per model: each "
        "call priced with its cache reads as input, less its price as billed.",
        FILTERS,
        _ok(
            "Models whose calls read the cache, and the savings.",
            {
                "type": "object",
                "properties": {
                    "filters": _ref("Filters"),
                    "models": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "model": {"type": "string"},
                                "calls": {
                                    "type": "integer",
                                    "description": "Calls with cache reads.",
                                },
                                "unpriced_calls": {
                                    "type": "integer",
                                    "description": "Of those, unpriced: no saving.",
                                },
                                "cache_read_tokens": {"type": "integer"},
                                "saved": _ref("Money"),
                            },
                            "required": [
                                "model",
                                "calls",
                                "unpriced_calls",
                                "cache_read_tokens",
                                "saved",
                            ],
                        },
                    },
                    "totals": {
                        "type": "object",
                        "properties": {
                            "calls": {"type": "integer"},
                            "unpriced_calls": {"type": "integer"},
                            "cache_read_tokens": {"type": "integer"},
                            "saved": _ref("Money"),
                        },
                    },
                },
            },
        ),
    ),
    "/api/openapi.json": {
        "get": {
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": _ok("OpenAPI 3.1.", {"type": "object"}),
            },
        }
    },
}


def document(development):
    """The OpenAPI document; the development login is in it only in development."""
    paths = {p: v for p, v in PATHS.items() if development or p != DEV_LOGIN}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": "1",
            "description": "Usage of Claude per user, day, model and session. "
            "Money is in US dollars as exact decimal strings.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@bp.get("/openapi.json")
def openapi():
    settings = current_app.extensions["tally.settings"]
    return jsonify(document(settings.development))
