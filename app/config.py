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
        queue=env.get("TALLY_QUEUE", "tally.usage"),
        data_dir=data_dir,
    )
    return _check_secret(settings)


def _check_secret(settings):
    secret = settings.jwt_secret
    if settings.development and not secret:
        # A fresh secret per process is fine for a development login: tokens
        # simply stop working when the server restarts.
        return _replace(settings, jwt_secret=secrets.token_urlsafe(48))
    if secret.lower() in WEAK_SECRETS or len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            "TALLY_JWT_SECRET is missing or weak: set it to at least "
            f"{MIN_SECRET_LENGTH} random characters, for example with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    return settings


def _replace(settings, **changes):
    from dataclasses import replace

    return replace(settings, **changes)
