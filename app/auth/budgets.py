"""Per-user budgets in US dollars, against the cost saved in the daily rows.

Days and months are UTC, as the daily rows are. Only saved calls count: a call
still on its way to the worker is not in the daily rows yet.
"""

from datetime import UTC, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from app.models import DailyUsage, User


def budget_status(session, user_id, now):
    """Limits, spending and what is left today and this month; ``over`` if any is 0."""
    user = session.get(User, user_id)
    day = now.astimezone(UTC).date()
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    daily = _status(user.daily_budget, _spent(session, user_id, day, day))
    monthly = _status(
        user.monthly_budget,
        _spent(session, user_id, month, next_month - timedelta(days=1)),
    )
    return {
        "daily_limit": daily[0],
        "daily_spent": daily[1],
        "daily_left": daily[2],
        "monthly_limit": monthly[0],
        "monthly_spent": monthly[1],
        "monthly_left": monthly[2],
        "over": daily[3] or monthly[3],
    }


def _spent(session, user_id, first, last):
    query = select(func.sum(DailyUsage.cost)).where(
        DailyUsage.user_id == user_id, DailyUsage.day.between(first, last)
    )
    return Decimal(session.scalar(query) or 0)


def _status(limit, spent):
    if limit is None:
        return None, spent, None, False
    limit = Decimal(limit)
    return limit, spent, max(limit - spent, Decimal(0)), spent >= limit


def over_budget_message(status):
    """Why a chat is refused, for the person at the keyboard."""
    if status["daily_limit"] is not None and status["daily_left"] == 0:
        return (
            f"daily budget reached: ${money_text(status['daily_spent'])} of "
            f"${money_text(status['daily_limit'])} spent today; "
            "it renews at 00:00 UTC"
        )
    return (
        f"monthly budget reached: ${money_text(status['monthly_spent'])} of "
        f"${money_text(status['monthly_limit'])} spent this month; "
        "it renews on the 1st (UTC)"
    )


def money_text(value):
    """US dollars as an exact decimal string with at least two places, or None."""
    if value is None:
        return None
    whole, _, cents = format(Decimal(value).normalize(), "f").partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"
