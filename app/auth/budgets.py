"""Per-user budgets in US dollars, against the cost saved in the daily rows.

Days and months are UTC, as the daily rows are. Only saved calls count: a call
still on its way to the worker is not in the daily rows yet.
"""

from datetime import UTC, timedelta
from decimal import Decimal

from sqlalchemy import case, func, select

from app.models import DailyUsage, User


def budget_status(session, user_id, now):
    """Limits, spending and what is left today and this month; ``over`` if any is 0."""
    user = session.get(User, user_id)
    day, month = _periods(now)
    spent_today, spent_month = _spent(session, user_id, day, month)
    daily = _status(user.daily_budget, spent_today)
    monthly = _status(user.monthly_budget, spent_month)
    return {
        "daily_limit": daily[0],
        "daily_spent": daily[1],
        "daily_left": daily[2],
        "monthly_limit": monthly[0],
        "monthly_spent": monthly[1],
        "monthly_left": monthly[2],
        "over": daily[3] or monthly[3],
    }


def has_budget(session, user_id):
    """Whether the user has a daily or monthly limit at all (no query if loaded)."""
    return has_limit(session.get(User, user_id))


def has_limit(user):
    return user.daily_budget is not None or user.monthly_budget is not None


def budget_left(session, user_id, now):
    """What is left today and this month, None where there is no limit."""
    if not has_budget(session, user_id):
        return {"daily_left": None, "monthly_left": None}
    status = budget_status(session, user_id, now)
    return {"daily_left": status["daily_left"], "monthly_left": status["monthly_left"]}


def _periods(now):
    day = now.astimezone(UTC).date()
    return day, day.replace(day=1)


def _spent(session, user_id, day, month):
    """Cost saved today and this month, in one pass over this month's rows."""
    next_month = (month + timedelta(days=32)).replace(day=1)
    today = func.sum(case((DailyUsage.day == day, DailyUsage.cost)))
    query = select(today, func.sum(DailyUsage.cost)).where(
        DailyUsage.user_id == user_id,
        DailyUsage.day >= month,
        DailyUsage.day < next_month,
    )
    spent_today, spent_month = session.execute(query).one()
    return Decimal(spent_today or 0), Decimal(spent_month or 0)


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
