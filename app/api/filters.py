"""The query string of the usage API: whose usage, which days, which time zone."""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.auth.users import find_user

UTC_NAMES = ("UTC", "Etc/UTC")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadFilter(ValueError):
    """A filter the caller cannot have: ``status`` is the HTTP answer."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Filters:
    user_id: int | None  # None: every user's usage (admins only)
    username: str | None
    since: date | None
    until: date | None
    tz: ZoneInfo

    @property
    def utc(self):
        """True when days are UTC days, the days the daily rows are kept in."""
        return self.tz.key in UTC_NAMES

    @property
    def start(self):
        """The first instant of ``since`` in ``tz``, or None."""
        return None if self.since is None else _midnight(self.since, self.tz)

    @property
    def end(self):
        """The first instant after ``until`` in ``tz`` (exclusive), or None."""
        if self.until is None:
            return None
        return _midnight(self.until + timedelta(days=1), self.tz)

    def public(self):
        return {
            "user": self.username,
            "since": self.since and self.since.isoformat(),
            "until": self.until and self.until.isoformat(),
            "tz": self.tz.key,
        }


def _midnight(day, tz):
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def read_filters(session, viewer, args):
    """``Filters`` from request ``args`` for ``viewer``; raises ``BadFilter``."""
    since, until = _day(args, "since"), _day(args, "until")
    if since and until and since > until:
        raise BadFilter(400, "since is after until")
    user_id, username = _scope(session, viewer, args.get("user"))
    return Filters(user_id, username, since, until, _zone(args.get("tz")))


def _day(args, name):
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        if DAY.match(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    raise BadFilter(400, f"{name} must be a day as YYYY-MM-DD, not {raw!r}")


def _zone(name):
    if name in (None, ""):
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadFilter(400, f"tz must be an IANA time zone, not {name!r}") from None


def _scope(session, viewer, username):
    """Whose usage: the viewer's own; an admin's choice, or everyone's."""
    if username in (None, ""):
        return (None, None) if viewer.is_admin else (viewer.id, viewer.username)
    if not viewer.is_admin and username != viewer.username:
        raise BadFilter(403, "only an admin may see another user's usage")
    user = find_user(session, username)
    if user is None:
        raise BadFilter(404, f"no user {username!r}")
    return user.id, user.username
