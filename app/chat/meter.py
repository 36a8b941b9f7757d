"""Read a call's usage from the Messages API stream events.

The rules the SDK's final message does not fully follow:
- ``message_delta`` counts are cumulative: they replace, never add to, what
  ``message_start`` said; a field absent from ``message_delta`` keeps its value.
- ``message_start``'s ``output_tokens`` is a placeholder and is never billed.
- With server-side compaction, ``message_delta.usage.iterations`` lists every
  pass and the top-level figures cover only the last one; the bill is their sum.
- The 5-minute/1-hour split of cache writes is not updated by ``message_delta``;
  cache writes the split leaves uncovered are billed at the 5-minute rate.
"""

from datetime import UTC, datetime

from app.usage.records import CallUsage

FIELDS = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
    "cache_read_input_tokens": "cache_read_tokens",
}


def _get(obj, name, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return default if value is None else value


class UsageMeter:
    """Follows one call's stream and knows its billable usage at every point."""

    def __init__(self):
        self.message_id = None
        self.model = None
        self.started_at = None
        self.counts = dict.fromkeys(FIELDS.values(), 0)
        self.cache_creation_1h_tokens = 0
        self.thinking_tokens = None
        self.web_search_requests = 0
        self.web_fetch_requests = 0
        self.service_tier = None
        self.inference_geo = None
        self.speed = None
        self.stop_reason = None
        self.finished = False

    def start(self, message):
        self.message_id = message.id
        self.model = message.model
        self.started_at = datetime.now(UTC)
        usage = message.usage
        self._take_counts(usage, skip=("output_tokens",))
        self._take_extras(usage)

    def delta(self, event):
        usage = event.usage
        self.stop_reason = _get(event.delta, "stop_reason", self.stop_reason)
        iterations = _get(usage, "iterations")
        if iterations:
            self._take_iterations(iterations)
        else:
            self._take_counts(usage)
        self._take_extras(usage)
        # The final counts are in: a recording may even lack the message_stop.
        self.finished = self.finished or self.stop_reason is not None

    def stop(self):
        self.finished = True

    def _take_counts(self, usage, skip=()):
        for api_name, name in FIELDS.items():
            value = _get(usage, api_name)
            if value is not None and api_name not in skip:
                self.counts[name] = value

    def _take_iterations(self, iterations):
        for name in self.counts:
            self.counts[name] = 0
        self.cache_creation_1h_tokens = 0
        for item in iterations:
            for api_name, name in FIELDS.items():
                self.counts[name] += _get(item, api_name, 0)
            split = _get(item, "cache_creation")
            self.cache_creation_1h_tokens += _get(split, "ephemeral_1h_input_tokens", 0)

    def _take_extras(self, usage):
        split = _get(usage, "cache_creation")
        if split is not None:
            self.cache_creation_1h_tokens = _get(split, "ephemeral_1h_input_tokens", 0)
        details = _get(usage, "output_tokens_details")
        thinking = _get(details, "thinking_tokens")
        if thinking is not None:
            self.thinking_tokens = thinking
        tools = _get(usage, "server_tool_use")
        if tools is not None:
            self.web_search_requests = _get(tools, "web_search_requests", 0)
            self.web_fetch_requests = _get(tools, "web_fetch_requests", 0)
        self.service_tier = _get(usage, "service_tier", self.service_tier)
        self.inference_geo = _get(usage, "inference_geo", self.inference_geo)
        self.speed = _get(usage, "speed", self.speed)

    @property
    def total_tokens(self):
        return sum(self.counts.values())

    def snapshot(self, context_window):
        used = self.total_tokens
        return {
            **self.counts,
            "thinking_tokens": self.thinking_tokens,
            "total_tokens": used,
            "context_window": context_window,
            "context_used": round(used / context_window, 6) if context_window else 0,
        }

    def to_call(self, *, user_id, session_id, request_id=""):
        """The usage record; partial unless the stream reached ``message_stop``."""
        cache_1h = min(
            self.cache_creation_1h_tokens, self.counts["cache_creation_tokens"]
        )
        return CallUsage(
            message_id=self.message_id,
            request_id=request_id or "",
            user_id=user_id,
            session_id=session_id,
            model=self.model,
            occurred_at=self.started_at,
            cache_creation_1h_tokens=cache_1h,
            thinking_tokens=self.thinking_tokens,
            web_search_requests=self.web_search_requests,
            web_fetch_requests=self.web_fetch_requests,
            service_tier=self.service_tier,
            inference_geo=self.inference_geo,
            speed=self.speed,
            partial=not self.finished,
            **self.counts,
        )
