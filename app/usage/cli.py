"""``flask usage …``: reports, imports and repairs, run beside the web app."""

import json
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError

from app.db import unit_of_work
from app.models import DeadLetter, UsageRecord, User
from app.usage import reports
from app.usage.formatting import decimal_text, render
from app.usage.importer import iter_transcript_files, read_calls
from app.usage.pricing import OverridesError

usage_cli = AppGroup("usage", help="Usage reports, imports and repairs.")

MEASURES = list(reports.MEASURES)
POLL_SECONDS = 0.2
# Message ids per ledger lookup: well under every database's bound-parameter limit.
LOOKUP_CHUNK = 500
NOTE_UNPRICED = (
    "note: {calls} unpriced (no price for the model yet) and left out of the "
    "costs; `flask usage reprice` prices them once a price exists"
)


def _db():
    return current_app.extensions["tally.db"]


# --- reports


class TimeZone(click.ParamType):
    """An IANA time zone name, checked with zoneinfo."""

    name = "zone"

    def convert(self, value, param, ctx):
        if isinstance(value, ZoneInfo):
            return value
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.fail(
                f"unknown time zone {value!r}: give an IANA name such as "
                "UTC, Europe/Paris or America/Los_Angeles",
                param,
                ctx,
            )


def _report_options(fn):
    options = [
        click.option("--user", "username", help="Only this user's usage."),
        click.option(
            "--since",
            type=click.DateTime(["%Y-%m-%d"]),
            help="From this day on (YYYY-MM-DD, inclusive).",
        ),
        click.option(
            "--until",
            type=click.DateTime(["%Y-%m-%d"]),
            help="Up to this day (YYYY-MM-DD, inclusive).",
        ),
        click.option(
            "--tz",
            "zone",
            type=TimeZone(),
            default="UTC",
            show_default=True,
            help="Cut days at midnight in this IANA time zone.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json", "csv"]),
            default="table",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _from_ledger_option(fn):
    return click.option(
        "--from-ledger",
        is_flag=True,
        help="Sum the ledger itself rather than the daily rows (same figures).",
    )(fn)


def _user_id(session, username):
    if username is None:
        return None
    user_id = session.scalar(select(User.id).where(User.username == username))
    if user_id is None:
        raise click.ClickException(f"no user {username!r}: see `flask users list`")
    return user_id


def _print_report(report, keys, username, since, until, zone, fmt, **options):
    since, until = since and since.date(), until and until.date()
    if since and until and since > until:
        raise click.BadParameter(f"--since {since} is after --until {until}")
    try:
        with unit_of_work(_db()) as session:
            scope = dict(user_id=_user_id(session, username), zone=zone)
            rows = report(session, since=since, until=until, **scope, **options)
    except DataError as exc:
        # PostgreSQL's zone list can lag behind Python's.
        message = f"the database refused --tz {zone.key}: {exc.orig}"
        raise click.ClickException(message) from None
    total = reports.total(rows)
    click.echo(render(rows, [*keys, *MEASURES], fmt, total=total))
    _note_unpriced(total["unpriced_calls"], fmt)


def _note_unpriced(count, fmt):
    if not count:
        return
    calls = "1 call is" if count == 1 else f"{count:,} calls are"
    note = NOTE_UNPRICED.format(calls=calls)
    # JSON and CSV stay parseable: the note goes to stderr.
    click.echo(note, err=fmt != "table")


@usage_cli.command("daily")
@_report_options
@_from_ledger_option
def daily_command(from_ledger, **options):
    """Print usage per day and user."""
    _print_report(
        reports.daily, ["day", "username"], from_ledger=from_ledger, **options
    )


@usage_cli.command("monthly")
@_report_options
@_from_ledger_option
def monthly_command(from_ledger, **options):
    """Print usage per month and user."""
    _print_report(
        reports.monthly, ["month", "username"], from_ledger=from_ledger, **options
    )


@usage_cli.command("sessions")
@_report_options
def sessions_command(**options):
    """Print usage per session, newest first."""
    keys = ["session_id", "username", "first_at", "last_at"]
    _print_report(reports.sessions, keys, **options)


@usage_cli.command("models")
@_report_options
def models_command(**options):
    """Print usage per model."""
    _print_report(reports.models, ["model"], **options)


@usage_cli.command("users")
@_report_options
def users_command(**options):
    """Print usage per user."""
    _print_report(reports.users, ["username"], **options)


# --- import


@usage_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--user", "username", required=True, help="Whose usage it is.")
@click.option("--direct", is_flag=True, help="Save in this process; no worker needed.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=500,
    show_default=True,
    help="Calls per task (or per transaction with --direct).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the worker has saved every call.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600,
    show_default=True,
    help="Seconds to wait for the worker.",
)
def import_command(path, username, direct, batch_size, wait, timeout):
    """Import Claude Code transcripts: one .jsonl file or a projects folder."""
    files = iter_transcript_files(path)
    user_id = _ensure_user(username)
    result = read_calls(files, user_id)
    batches = [
        result.calls[i : i + batch_size]
        for i in range(0, len(result.calls), batch_size)
    ]
    keys = {call.key for call in result.calls}

    if direct:
        new = _save_directly(batches)
    else:
        new = len(keys - _saved_keys(keys))
        _enqueue(batches)
        if not wait:
            _print_summary(username, files, result)
            click.echo(f"queued {len(keys):,} calls in {len(batches):,} tasks")
            return
        _wait_until_saved(keys, timeout)
    _print_summary(username, files, result, new=new, ledger=_ledger_figures(keys))


def _ensure_user(username):
    from app.auth.users import AccountError, create_user, find_user

    with unit_of_work(_db()) as session:
        user = find_user(session, username)
        if user is None:
            try:
                user = create_user(session, username)
            except AccountError as exc:
                raise click.BadParameter(str(exc), param_hint="--user") from None
            click.echo(f"created user {username}")
        return user.id


def _save_directly(batches):
    from workers.ledger import save_calls

    new = 0
    for batch in batches:
        with unit_of_work(_db()) as session:
            new += len(save_calls(session, batch))
    return new


def _enqueue(batches):
    from kombu.exceptions import OperationalError

    from celery_app import SAVE_USAGE, make_celery

    celery = make_celery(current_app.extensions["tally.settings"])
    try:
        for batch in batches:
            celery.send_task(SAVE_USAGE, args=[[c.to_payload() for c in batch]])
    except OperationalError as exc:
        raise click.ClickException(
            f"cannot reach the broker ({exc}): start it, or import with --direct"
        ) from None
    finally:
        celery.close()


def _wait_until_saved(keys, timeout):
    missing = set(keys)
    deadline = time.monotonic() + timeout
    click.echo(f"waiting for the worker to save {len(missing):,} calls")
    while missing:
        missing -= _saved_keys(missing)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"{len(missing):,} of {len(keys):,} calls are not in the ledger after "
                f"{timeout:g}s: is a worker running (`celery -A celery_app worker`)? "
                "The tasks stay queued; see `flask usage replay` for dead letters"
            )
        time.sleep(POLL_SECONDS)


def _ledger_rows(keys, *columns):
    """Ledger rows of the calls ``keys`` (message id, request id)."""
    r = UsageRecord
    message_ids = sorted({message_id for message_id, _ in keys})
    rows = []
    with unit_of_work(_db()) as session:
        for i in range(0, len(message_ids), LOOKUP_CHUNK):
            chunk = message_ids[i : i + LOOKUP_CHUNK]
            query = select(r.message_id, r.request_id, *columns)
            rows += session.execute(query.where(r.message_id.in_(chunk))).all()
    return [row for row in rows if (row.message_id, row.request_id) in keys]


def _saved_keys(keys):
    return {(row.message_id, row.request_id) for row in _ledger_rows(keys)}


def _ledger_figures(keys):
    """Unpriced calls, tokens and cost of the imported calls, as the ledger has them."""
    r = UsageRecord
    tokens = [r.__table__.c[name] for name in reports.TOKEN_COLUMNS]
    rows = _ledger_rows(keys, r.cost, *tokens)
    return reports.total(
        dict(row._mapping, calls=1, unpriced_calls=int(row.cost is None))
        for row in rows
    )


def _print_summary(username, files, result, *, new=None, ledger=None):
    calls = len(result.calls)
    lines = [
        f"files: {len(files):,}",
        f"lines read: {result.lines_read:,}",
        f"usage lines: {result.usage_lines:,} ({result.repeats:,} repeats)",
        *(
            f"skipped, {reason}: {count:,}"
            for reason, count in sorted(result.skipped.items())
        ),
        f"calls: {calls:,}",
    ]
    if new is not None:
        click.echo(
            f"imported {calls:,} calls for {username}: {new:,} new, "
            f"{calls - new:,} already saved"
        )
        lines += [f"new calls saved: {new:,}", f"already saved: {calls - new:,}"]
    if ledger is not None:
        lines += [
            f"unpriced calls: {ledger['unpriced_calls']:,}",
            f"total tokens: {ledger['total_tokens']:,}",
            f"total cost: {_dollars(ledger['cost'])}",
        ]
    click.echo("\n".join(lines))
    if ledger is not None:
        _note_unpriced(ledger["unpriced_calls"], "table")


def _dollars(cost):
    return "unpriced" if cost is None else f"${decimal_text(cost)}"


# --- repairs


@usage_cli.command("reprice")
@click.option("--dry-run", is_flag=True, help="Only say what would be priced.")
def reprice_command(dry_run):
    """Price unpriced calls whose model has a price now; re-derive their rows."""
    try:
        with unit_of_work(_db()) as session:
            result = reports.reprice(session, dry_run=dry_run)
    except OverridesError as exc:
        raise click.ClickException(str(exc)) from None
    if not result.unpriced:
        click.echo("no unpriced calls")
        return
    by_model = ", ".join(f"{m} {n:,}" for m, n in sorted(result.priced.items()))
    verb = "would price" if dry_run else "priced"
    click.echo(
        f"{verb} {result.priced_calls:,} of {result.unpriced:,} unpriced calls "
        f"({_dollars(result.cost)})" + (f": {by_model}" if by_model else "")
    )
    if result.priced_calls and not dry_run:
        click.echo(
            f"re-derived {_count(result.sessions, 'session row')} and "
            f"{_count(result.days, 'daily row')} from the ledger"
        )
    left = result.unpriced - result.priced_calls
    if left:
        stay = "call stays" if left == 1 else "calls stay"
        click.echo(
            f"{left:,} {stay} unpriced: add their models to the price overrides "
            "file (TALLY_PRICE_OVERRIDES), then run `flask usage reprice` again"
        )


def _count(n, noun):
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


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
        new, refused = _replay_each(session, calls, save_calls)
        replayed = {c.key for c in calls} - {c.key for c, _ in refused}
        now = datetime.now(UTC)
        for letter in letters:
            if _key(letter) in replayed:
                letter.replayed_at = now
    click.echo(
        f"replayed {len(calls) - len(refused)} records ({len(new)} new); "
        f"{len(invalid)} invalid records stay dead letters"
    )
    for call, reason in refused:
        click.echo(f"still refused: {call.message_id}: {reason}", err=True)


def _replay_each(session, calls, save_calls):
    """Save each record in a savepoint of its own: one refusal stops no other."""
    new, refused = [], []
    for call in calls:
        try:
            with session.begin_nested():
                new += save_calls(session, [call])
        except (IntegrityError, DataError) as exc:
            refused.append((call, str(exc.orig).splitlines()[0]))
    return new, refused


def _key(letter):
    payload = json.loads(letter.payload)
    if not isinstance(payload, dict):
        return None
    return (payload.get("message_id"), payload.get("request_id", ""))
