"""``flask usage …``: reports and repairs, run beside the web app."""

import json
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from app.db import unit_of_work
from app.models import DeadLetter, User
from app.usage import reports
from app.usage.formatting import render

usage_cli = AppGroup("usage", help="Usage reports and repairs.")

TOKENS = [
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cost",
]


def _db():
    return current_app.extensions["tally.db"]


def _filters(fn):
    fn = click.option("--user", "username", help="Only this user's usage.")(fn)
    fn = click.option(
        "--since", type=click.DateTime(["%Y-%m-%d"]), help="From this day (YYYY-MM-DD)."
    )(fn)
    fn = click.option(
        "--until",
        type=click.DateTime(["%Y-%m-%d"]),
        help="Up to this day (YYYY-MM-DD).",
    )(fn)
    fn = click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
    )(fn)
    return fn


def _user_id(session, username):
    if username is None:
        return None
    user_id = session.scalar(select(User.id).where(User.username == username))
    if user_id is None:
        raise click.ClickException(f"no user {username!r}: see `flask users list`")
    return user_id


@usage_cli.command("daily")
@_filters
def daily_command(username, since, until, fmt):
    """Print usage per day."""
    with unit_of_work(_db()) as session:
        rows = reports.daily(
            session,
            user_id=_user_id(session, username),
            since=since and since.date(),
            until=until and until.date(),
        )
    click.echo(render(rows, ["day", "username", *TOKENS], fmt))


@usage_cli.command("sessions")
@_filters
def sessions_command(username, since, until, fmt):
    """Print usage per session, newest first."""
    with unit_of_work(_db()) as session:
        rows = reports.sessions(
            session,
            user_id=_user_id(session, username),
            since=since and since.replace(tzinfo=UTC),
            until=until and until.replace(tzinfo=UTC),
        )
    click.echo(render(rows, ["session_id", "username", "last_at", *TOKENS], fmt))


@usage_cli.command("verify")
def verify_command():
    """Check that every session and daily row equals the sum of its ledger records."""
    with unit_of_work(_db()) as session:
        problems = reports.verify(session)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} rows differ from the ledger")
    click.echo("ok: session and daily rows equal the ledger")


@usage_cli.command("replay")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed.")
def replay_command(dry_run):
    """Save the dead-lettered usage records again."""
    from workers.ledger import save_calls
    from workers.tasks import parse_records

    with unit_of_work(_db()) as session:
        letters = session.scalars(
            select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
        ).all()
        calls, invalid = parse_records([json.loads(d.payload) for d in letters])
        if dry_run:
            click.echo(
                f"would replay {len(calls)} records; {len(invalid)} stay invalid"
            )
            return
        new = save_calls(session, calls)
        replayed = {c.key for c in calls}
        now = datetime.now(UTC)
        for letter in letters:
            if _key(letter) in replayed:
                letter.replayed_at = now
    click.echo(
        f"replayed {len(calls)} records ({len(new)} new); "
        f"{len(invalid)} invalid records stay dead letters"
    )


def _key(letter):
    payload = json.loads(letter.payload)
    if not isinstance(payload, dict):
        return None
    return (payload.get("message_id"), payload.get("request_id", ""))
