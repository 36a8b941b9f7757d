"""Configuration: one module of defaults, read from the environment once.

Settings come from ``TALLY_*`` variables, plus the conventional ``DATABASE_URL``,
``CELERY_BROKER_URL`` and ``ANTHROPIC_API_KEY`` that other tools already set.
"""

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEAK_SECRETS = {"", "secret", "changeme", "dev", "development", "jwt-secret"}
MIN_SECRET_LENGTH = 32


class ConfigError(RuntimeError):
    """A setting is missing or unsafe; the message says which and how to fix it."""


def _int(env, name, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None


def _data_dir(env):
    return Path(env.get("TALLY_DATA_DIR") or ROOT / "instance")


@dataclass(frozen=True)
class Settings:
    env: str
    database_url: str
    broker_url: str
    jwt_secret: str
    anthropic_api_key: str | None
    anthropic_base_url: str | None
    model: str
    max_tokens: int
    max_message_bytes: int
    outbox_relay_seconds: int
    queue: str
    data_dir: Path
    extra: dict = field(default_factory=dict)
    # Seconds before an outbox entry handed to the broker but not saved is resent.
    outbox_resend_seconds: int = 300
    # Tokens issued elsewhere (an SSO provider): all four unset means local only.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    chats_per_minute: int = 30
    # Text deltas arriving closer together than this share one websocket frame.
    text_frame_ms: int = 30
    # Bearer token Prometheus sends for /metrics; unset: open in development only.
    metrics_token: str | None = None

    @property
    def external_tokens(self):
        """True when tokens from an outside issuer are accepted."""
        return self.jwt_issuer is not None

    @property
    def development(self):
        return self.env in ("development", "test")

    @property
    def simulated(self):
        """True when Claude is the local simulator rather than the real API."""
        return not self.anthropic_api_key


def load(env=None):
    """Read settings from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    data_dir = _data_dir(env)
    tally_env = env.get("TALLY_ENV", "development")
    if tally_env not in ("development", "test", "production"):
        raise ConfigError(
            f"TALLY_ENV must be development, test or production, not {tally_env!r}"
        )
    settings = Settings(
        env=tally_env,
        database_url=env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'tally.db'}",
        broker_url=env.get("CELERY_BROKER_URL")
        or f"sqla+sqlite:///{data_dir / 'broker.db'}",
        jwt_secret=env.get("TALLY_JWT_SECRET") or "",
        anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
        anthropic_base_url=env.get("TALLY_ANTHROPIC_BASE_URL") or None,
        model=env.get("TALLY_MODEL", "claude-sonnet-4-5"),
        max_tokens=_int(env, "TALLY_MAX_TOKENS", 4096),
        max_message_bytes=_int(env, "TALLY_MAX_MESSAGE_BYTES", 64 * 1024),
        outbox_relay_seconds=_int(env, "TALLY_OUTBOX_RELAY_SECONDS", 5),
        outbox_resend_seconds=_positive(env, "TALLY_OUTBOX_RESEND_SECONDS", 300),
        queue=env.get("TALLY_QUEUE", "tally.usage"),
        data_dir=data_dir,
        jwt_issuer=env.get("TALLY_JWT_ISSUER") or None,
        jwt_audience=env.get("TALLY_JWT_AUDIENCE") or None,
        jwt_public_key_file=_path(env, "TALLY_JWT_PUBLIC_KEY_FILE"),
        jwt_jwks_file=_path(env, "TALLY_JWT_JWKS_FILE"),
        access_token_minutes=_positive(env, "TALLY_ACCESS_TOKEN_MINUTES", 15),
        refresh_token_days=_positive(env, "TALLY_REFRESH_TOKEN_DAYS", 30),
        chats_per_minute=_int(env, "TALLY_CHATS_PER_MINUTE", 30),
        text_frame_ms=_int(env, "TALLY_TEXT_FRAME_MS", 30),
        metrics_token=env.get("TALLY_METRICS_TOKEN") or None,
    )
    _check_external(settings)
    if settings.chats_per_minute < 0:
        raise ConfigError("TALLY_CHATS_PER_MINUTE must be 0 (no limit) or more")
    if not 0 <= settings.text_frame_ms <= 1000:
        raise ConfigError("TALLY_TEXT_FRAME_MS must be 0 (a frame per delta) to 1000")
    return _check_secret(settings)


def _path(env, name):
    raw = env.get(name)
    return Path(raw) if raw else None


def _positive(env, name, default):
    value = _int(env, name, default)
    if value < 1:
        raise ConfigError(f"{name} must be 1 or more, not {value}")
    return value


def _check_external(settings):
    keys = [settings.jwt_public_key_file, settings.jwt_jwks_file]
    wanted = [settings.jwt_issuer, settings.jwt_audience, *keys]
    if not any(wanted):
        return
    if not settings.jwt_issuer or not settings.jwt_audience:
        raise ConfigError(
            "tokens from another issuer need both TALLY_JWT_ISSUER and "
            "TALLY_JWT_AUDIENCE; unset all TALLY_JWT_* key settings to use "
            "local accounts only"
        )
    if sum(key is not None for key in keys) != 1:
        raise ConfigError(
            "set exactly one of TALLY_JWT_PUBLIC_KEY_FILE (a PEM public key) or "
            "TALLY_JWT_JWKS_FILE (a local JWKS file) for TALLY_JWT_ISSUER"
        )


def _check_secret(settings):
    if settings.development and not settings.jwt_secret:
        # A fresh secret per process is fine for a development login: tokens
        # simply stop working when the server restarts.
        return _replace(settings, jwt_secret=secrets.token_urlsafe(48))
    require_strong_secret(settings)
    return settings


def require_strong_secret(settings):
    """Raise ``ConfigError`` unless the JWT secret is long and not a known default."""
    secret = settings.jwt_secret or ""
    if secret.lower() in WEAK_SECRETS or len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            "TALLY_JWT_SECRET is missing or weak: set it to at least "
            f"{MIN_SECRET_LENGTH} random characters, for example with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )


def _replace(settings, **changes):
    from dataclasses import replace

    return replace(settings, **changes)
