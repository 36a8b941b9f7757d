"""``flask users …``: local accounts."""

import sys

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from app.auth import users
from app.auth.budgets import money_text
from app.db import unit_of_work
from app.models import User

users_cli = AppGroup("users", help="Local accounts.")

LIST_COLUMNS = ("id", "username", "role", "status", "sign-in", "daily", "monthly")


def _db():
    return current_app.extensions["tally.db"]


def _user(session, username):
    user = users.find_user(session, username)
    if user is None:
        raise click.ClickException(f"no user {username!r}: see `flask users list`")
    return user


@users_cli.command("create")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Give the account the admin role.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input."
)
def create_command(username, admin, password_stdin):
    """Create a local account with a password."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with unit_of_work(_db()) as session:
            user = users.create_user(
                session, username, password, role="admin" if admin else "user"
            )
    except users.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {user.role} {user.username} (id {user.id})")


@users_cli.command("list")
def list_command():
    """List the accounts."""
    with unit_of_work(_db()) as session:
        rows = [_list_row(u) for u in session.scalars(select(User).order_by(User.id))]
    table = [LIST_COLUMNS, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(LIST_COLUMNS))]
    for row in table:
        cells = (str(v).ljust(w) for v, w in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _list_row(user):
    sign_in = "password" if user.password_hash else "token"
    if user.external_subject:
        sign_in = "sso"
    return (
        user.id,
        user.username,
        user.role,
        "disabled" if user.disabled else "active",
        sign_in,
        money_text(user.daily_budget) or "-",
        money_text(user.monthly_budget) or "-",
    )


@users_cli.command("disable")
@click.argument("username")
def disable_command(username):
    """Disable an account: its tokens stop working at once."""
    with unit_of_work(_db()) as session:
        _user(session, username).disabled = True
    click.echo(f"disabled {username}")


@users_cli.command("enable")
@click.argument("username")
def enable_command(username):
    """Enable a disabled account again."""
    with unit_of_work(_db()) as session:
        _user(session, username).disabled = False
    click.echo(f"enabled {username}")


@users_cli.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(users.ROLES))
def set_role_command(username, role):
    """Make an account an admin or a plain user."""
    with unit_of_work(_db()) as session:
        _user(session, username).role = role
    click.echo(f"{username} is now {role}")


@users_cli.command("set-budget")
@click.argument("username")
@click.option("--daily", metavar="USD", help='Budget per UTC day; "none" clears it.')
@click.option("--monthly", metavar="USD", help='Budget per UTC month; "none" too.')
def set_budget_command(username, daily, monthly):
    """Set an account's daily and monthly budgets in US dollars."""
    if daily is None and monthly is None:
        raise click.UsageError("give --daily, --monthly or both")
    try:
        amounts = {
            name: users.parse_usd(text)
            for name, text in (("daily_budget", daily), ("monthly_budget", monthly))
            if text is not None
        }
    except users.AccountError as exc:
        raise click.BadParameter(str(exc)) from None
    with unit_of_work(_db()) as session:
        user = _user(session, username)
        for name, amount in amounts.items():
            setattr(user, name, amount)
        shown = _list_row(user)
    click.echo(f"{username}: daily {shown[5]}, monthly {shown[6]}")
