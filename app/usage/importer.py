"""Read Claude Code transcripts (``~/.claude/projects``) into usage records.

Claude Code writes one JSON line per content block and repeats lines while it
streams, so one billed call (one message id + request id) shows up on several
lines; the one with the largest token total is kept. ``progress`` lines carry a
copy of a sub-agent's usage that its own lines already count, so they are never
read for usage. Rules and checked totals: /work/shared/claude-code-logs/README.md.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.usage.records import CallUsage

log = logging.getLogger(__name__)

SOURCE = "import"
SYNTHETIC_MODEL = "<synthetic>"

SKIP_BLANK = "blank line"
SKIP_NOT_JSON = "not JSON"
SKIP_NOT_OBJECT = "not a JSON object"
SKIP_PROGRESS = "progress line (nested usage is counted on its own lines)"
SKIP_NO_USAGE = "no usage"
SKIP_SYNTHETIC = "synthetic model"
SKIP_NO_MESSAGE_ID = "no message id"
SKIP_NO_MODEL = "no model"
SKIP_NO_SESSION = "no session id"
SKIP_BAD_TIME = "bad timestamp"
SKIP_BAD_USAGE = "bad usage numbers"
SKIP_BAD_ID = "id not text or too long for the ledger"

# Column widths of usage_records, so that every record read can be saved.
_MAX_LENGTHS = {"message_id": 128, "request_id": 128, "model": 128, "session_id": 64}
_MAX_LABEL_LENGTH = 32


class SkippedLine(Exception):
    """A line that is not a billed call; the message is the reason."""


@dataclass
class ImportResult:
    """Calls found in transcripts, one per billed call, and what was left out.

    Every line read is either a usage line (``usage_lines``: the kept line of a
    call or a repeat of it) or skipped for a reason counted in ``skipped``.
    """

    calls: list = field(default_factory=list)
    lines_read: int = 0
    usage_lines: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def repeats(self):
        return self.usage_lines - len(self.calls)

    @property
    def lines_skipped(self):
        return sum(self.skipped.values())


def iter_transcript_files(path):
    """The transcript files under ``path``: one .jsonl file, or every .jsonl below a
    folder shaped like ``~/.claude/projects`` (sub-agent files included)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no transcript file or folder at {path}")
    return sorted(p for p in path.rglob("*.jsonl") if p.is_file())


def read_calls(paths, user_id):
    """Read transcript files into ``CallUsage`` records, deduplicated across all of
    them; malformed lines are counted in ``skipped``, never raised."""
    result = ImportResult()
    kept = {}
    for path in paths:
        _read_file(Path(path), user_id, result, kept)
    result.calls = sorted(kept.values(), key=lambda c: (c.occurred_at, c.key))
    log.info(
        "import for user %s: %d calls from %d lines (%d repeats, %d skipped)",
        user_id,
        len(result.calls),
        result.lines_read,
        result.repeats,
        result.lines_skipped,
    )
    return result


def _read_file(path, user_id, result, kept):
    fallback_session = session_id_from_path(path)
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            result.lines_read += 1
            try:
                call = parse_line(line, user_id, fallback_session)
            except SkippedLine as reason:
                result.skipped[str(reason)] += 1
                continue
            result.usage_lines += 1
            _keep_largest(kept, call)


def _keep_largest(kept, call):
    # Repeated lines grow while a reply streams; the first one has almost no output.
    current = kept.get(call.key)
    if current is None or call.total_tokens > current.total_tokens:
        kept[call.key] = call


def session_id_from_path(path):
    """The session a transcript file belongs to when its lines do not say."""
    path = Path(path)
    if path.parent.name == "subagents":
        return path.parent.parent.name
    name = path.name.removesuffix(".jsonl")
    return name.split(".subagents.", 1)[0]


def parse_line(line, user_id, fallback_session=""):
    """The ``CallUsage`` of one line; raises ``SkippedLine`` for any other line."""
    entry = _load(line)
    message = entry.get("message")
    if entry.get("type") == "progress":
        raise SkippedLine(SKIP_PROGRESS)
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        raise SkippedLine(SKIP_NO_USAGE)
    ids = _ids(entry, message, fallback_session)
    return CallUsage(
        user_id=user_id,
        occurred_at=_timestamp(entry.get("timestamp")),
        source=SOURCE,
        **ids,
        **_usage_fields(message["usage"]),
    )


def _load(line):
    if not line.strip():
        raise SkippedLine(SKIP_BLANK)
    try:
        entry = json.loads(line)
    except ValueError:
        raise SkippedLine(SKIP_NOT_JSON) from None
    if not isinstance(entry, dict):
        raise SkippedLine(SKIP_NOT_OBJECT)
    return entry


def _ids(entry, message, fallback_session):
    model = message.get("model")
    if model == SYNTHETIC_MODEL:
        raise SkippedLine(SKIP_SYNTHETIC)
    ids = {
        "message_id": _text(message.get("id"), SKIP_NO_MESSAGE_ID),
        "request_id": entry.get("requestId") or "",
        "model": _text(model, SKIP_NO_MODEL),
        "session_id": _text(
            entry.get("sessionId") or fallback_session, SKIP_NO_SESSION
        ),
    }
    for name, value in ids.items():
        if not isinstance(value, str) or len(value) > _MAX_LENGTHS[name]:
            raise SkippedLine(SKIP_BAD_ID)
    return ids


def _text(value, reason):
    if not isinstance(value, str) or not value:
        raise SkippedLine(reason)
    return value


def _timestamp(value):
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise SkippedLine(SKIP_BAD_TIME) from None
    if parsed.tzinfo is None:
        raise SkippedLine(SKIP_BAD_TIME)
    return parsed.astimezone(UTC)


def _usage_fields(usage):
    cache_creation = usage.get("cache_creation") or {}
    server_tools = usage.get("server_tool_use") or {}
    if not isinstance(cache_creation, dict) or not isinstance(server_tools, dict):
        raise SkippedLine(SKIP_BAD_USAGE)
    fields = {
        "input_tokens": _count(usage.get("input_tokens", -1)),
        "output_tokens": _count(usage.get("output_tokens", -1)),
        "cache_creation_tokens": _count(usage.get("cache_creation_input_tokens")),
        "cache_creation_1h_tokens": _count(
            cache_creation.get("ephemeral_1h_input_tokens")
        ),
        "cache_read_tokens": _count(usage.get("cache_read_input_tokens")),
        "web_search_requests": _count(server_tools.get("web_search_requests")),
        "web_fetch_requests": _count(server_tools.get("web_fetch_requests")),
    }
    if fields["cache_creation_1h_tokens"] > fields["cache_creation_tokens"]:
        raise SkippedLine(SKIP_BAD_USAGE)
    for name in ("service_tier", "inference_geo", "speed"):
        fields[name] = _label(usage.get(name))
    return fields


def _count(value):
    """A token or request count; -1 stands for a count that must be there."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SkippedLine(SKIP_BAD_USAGE)
    return value


def _label(value):
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_LABEL_LENGTH:
        raise SkippedLine(SKIP_BAD_USAGE)
    return value
