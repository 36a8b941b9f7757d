"""The usage record: what one billed Claude call used, as it travels to the worker.

A record is a plain dict on the wire (JSON, ids and numbers only) so that the task
protocol stays stable; ``CallUsage`` is its checked Python form.
"""

from dataclasses import dataclass, fields
from datetime import UTC, datetime

COUNT_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "web_search_requests",
    "web_fetch_requests",
)


class InvalidRecord(ValueError):
    """A payload that cannot be a usage record; the message names the field."""


@dataclass(frozen=True)
class CallUsage:
    message_id: str
    user_id: int
    session_id: str
    model: str
    occurred_at: datetime
    request_id: str = ""
    # Anthropic's meaning: input_tokens excludes cache writes and cache reads.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    cache_read_tokens: int = 0
    thinking_tokens: int | None = None
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    partial: bool = False
    source: str = "chat"

    @property
    def total_tokens(self):
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_tokens
            + self.cache_read_tokens
        )

    @property
    def key(self):
        return (self.message_id, self.request_id)

    def to_payload(self):
        # Not dataclasses.asdict: its deep copy costs more than the save itself.
        payload = {name: getattr(self, name) for name in _FIELD_NAMES}
        payload["occurred_at"] = self.occurred_at.isoformat()
        return payload

    @classmethod
    def from_payload(cls, payload):
        if not isinstance(payload, dict):
            raise InvalidRecord(f"a usage record is a JSON object, not {payload!r}")
        values = {k: v for k, v in payload.items() if k in _KNOWN}
        for name in ("message_id", "session_id", "model"):
            if not isinstance(values.get(name), str) or not values[name]:
                raise InvalidRecord(f"usage record needs a non-empty {name}")
        if not isinstance(values.get("user_id"), int):
            raise InvalidRecord("usage record needs an integer user_id")
        for name in COUNT_FIELDS:
            value = values.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRecord(
                    f"{name} must be a whole number >= 0, not {value!r}"
                )
        values["occurred_at"] = _parse_time(values.get("occurred_at"))
        if values.get("cache_creation_1h_tokens", 0) > values.get(
            "cache_creation_tokens", 0
        ):
            raise InvalidRecord(
                "cache_creation_1h_tokens exceeds cache_creation_tokens"
            )
        return cls(**values)


_FIELD_NAMES = tuple(f.name for f in fields(CallUsage))
_KNOWN = frozenset(_FIELD_NAMES)


def _parse_time(value):
    if not isinstance(value, str):
        raise InvalidRecord("usage record needs occurred_at as an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRecord(f"occurred_at is not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidRecord(f"occurred_at needs a time zone: {value!r}")
    return parsed.astimezone(UTC)
