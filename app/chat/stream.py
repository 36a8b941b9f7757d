"""Run one Claude call with the SDK's synchronous stream and report as it goes."""

import logging
from dataclasses import dataclass, field

import anthropic

from app.chat.meter import UsageMeter

log = logging.getLogger(__name__)


class StopReply(Exception):
    """Cut the reply short: ``code`` and ``message`` say why."""

    code = "stopped"
    message = "the reply was stopped"


class ClientGone(StopReply):
    """The browser closed the socket while the reply was streaming."""

    code = "client_gone"
    message = "the client went away"


class ServerStopping(StopReply):
    """The server is stopping; the reply in flight is recorded as it stands."""

    code = "server_stopping"
    message = "Tally is restarting: this reply was cut short; what it used is recorded"


@dataclass
class CallResult:
    meter: UsageMeter
    request_id: str = ""
    error: str | None = None
    error_code: str | None = None
    parts: list = field(default_factory=list)

    @property
    def text(self):
        return "".join(self.parts)

    @property
    def billed(self):
        """Claude started the reply, so the call costs money even if it broke."""
        return self.meter.message_id is not None


def run_call(client, *, model, max_tokens, messages, on_event):
    """Stream a reply; ``on_event(kind, meter, text)`` sees every step.

    ``on_event`` raises a ``StopReply`` to stop: leaving the ``with`` block closes
    the HTTP response, so Claude stops generating tokens nobody reads.
    """
    result = CallResult(meter=UsageMeter())
    try:
        with client.messages.stream(
            model=model, max_tokens=max_tokens, messages=messages
        ) as stream:
            result.request_id = stream.response.headers.get("request-id", "")
            for event in stream:
                _follow(event, result, on_event)
    except StopReply as stop:
        result.error, result.error_code = stop.message, stop.code
    except anthropic.APIStatusError as exc:
        result.error, result.error_code = _status_message(exc), _status_code(exc)
    except anthropic.APIConnectionError as exc:
        result.error, result.error_code = f"could not reach Claude: {exc}", "upstream"
    except Exception as exc:  # a broken stream must never take the server down
        log.exception("call %s: stream failed", result.meter.message_id)
        result.error, result.error_code = f"the reply broke off: {exc}", "upstream"
    if result.error is None and not result.meter.finished:
        result.error = "the reply ended before Claude finished it"
        result.error_code = "incomplete"
    return result


def _follow(event, result, on_event):
    meter = result.meter
    kind = event.type
    if kind == "message_start":
        meter.start(event.message)
        on_event("start", meter, None)
    elif kind == "content_block_delta":
        _follow_delta(event.delta, result, on_event)
    elif kind == "message_delta":
        meter.delta(event)
        on_event("usage", meter, None)
    elif kind == "message_stop":
        meter.stop()


def _follow_delta(delta, result, on_event):
    if delta.type == "text_delta":
        result.parts.append(delta.text)
        on_event("text", result.meter, delta.text)
    elif delta.type == "thinking_delta":
        on_event("thinking", result.meter, delta.thinking)


def _status_message(exc):
    kind = _error_type(exc)
    if exc.status_code == 200:
        return f"Claude reported an error mid-reply ({kind}): {exc.message}"
    return f"Claude refused the call ({exc.status_code} {kind}): {exc.message}"


def _status_code(exc):
    return _error_type(exc) or f"http_{exc.status_code}"


def _error_type(exc):
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    return error.get("type") if isinstance(error, dict) else None
