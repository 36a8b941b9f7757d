"""``flask users …``: create, list, disable, roles and budgets."""

from decimal import Decimal

import pytest

from app.auth import passwords
from app.auth.tokens import issue_tokens
from app.auth.users import find_user
from app.db import unit_of_work

PASSWORD = "correct horse battery"


@pytest.fixture
def app(app):
    """The shared app, with the outbox relay its first request starts stopped after."""
    yield app
    app.extensions["tally.relay"].stop()


@pytest.fixture
def users_cli(app, db):
    runner = app.test_cli_runner()

    def run(*args, input=None):
        return runner.invoke(args=["users", *args], input=input)

    return run


def account(app, username):
    with unit_of_work(app.extensions["tally.db"]) as session:
        return find_user(session, username)


def test_create_reads_the_password_from_stdin(app, users_cli):
    result = users_cli("create", "alice", "--password-stdin", input=PASSWORD + "\n")

    assert result.exit_code == 0, result.output
    assert result.output == "created user alice (id 1)\n"
    alice = account(app, "alice")
    assert alice.role == "user"
    assert passwords.verify_password(PASSWORD, alice.password_hash)
    login = app.test_client().post(
        "/api/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert login.status_code == 200


def test_create_prompts_twice_and_makes_an_admin(app, users_cli):
    result = users_cli("create", "root", "--admin", input=f"{PASSWORD}\n{PASSWORD}\n")

    assert result.exit_code == 0, result.output
    assert result.output.endswith("created admin root (id 1)\n")
    assert "Repeat for confirmation" in result.output
    assert PASSWORD not in result.output
    assert account(app, "root").role == "admin"


@pytest.mark.parametrize(
    "name, password, message",
    [
        ("alice", "short", "Error: a password needs at least 8 characters"),
        ("al ice", PASSWORD, "Error: username: 1-80 letters, digits"),
    ],
)
def test_create_refuses_bad_input(app, users_cli, name, password, message):
    result = users_cli("create", name, "--password-stdin", input=password + "\n")

    assert result.exit_code == 1
    assert message in result.output
    assert account(app, name) is None


def test_create_refuses_a_taken_name(users_cli):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)
    again = users_cli("create", "alice", "--password-stdin", input=PASSWORD)

    assert again.exit_code == 1
    assert again.output == "Error: user 'alice' already exists\n"


def test_list_shows_every_account(app, users_cli):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)
    users_cli("create", "root", "--admin", "--password-stdin", input=PASSWORD)
    users_cli("set-budget", "alice", "--daily", "2.5", "--monthly", "40")
    users_cli("disable", "root")
    app.test_client().post("/api/auth/dev-login", json={"username": "dev"})

    result = users_cli("list")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "id  username  role   status    sign-in   daily  monthly",
        "1   alice     user   active    password  2.50   40.00",
        "2   root      admin  disabled  password  -      -",
        "3   dev       user   active    token     -      -",
    ]


def test_disable_stops_the_tokens_at_once(app, users_cli):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)
    with app.app_context():
        access = issue_tokens(1)["access_token"]
    headers = {"Authorization": f"Bearer {access}"}
    client = app.test_client()
    assert client.get("/api/me", headers=headers).status_code == 200

    result = users_cli("disable", "alice")

    assert (result.exit_code, result.output) == (0, "disabled alice\n")
    assert client.get("/api/me", headers=headers).status_code == 401
    assert users_cli("enable", "alice").exit_code == 0
    assert client.get("/api/me", headers=headers).status_code == 200


def test_set_budget_and_clear_it(app, users_cli):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)

    both = users_cli("set-budget", "alice", "--daily", "$5", "--monthly", "100.125")
    stored = account(app, "alice")
    cleared = users_cli("set-budget", "alice", "--daily", "none")

    assert (both.exit_code, both.output) == (
        0,
        "alice: daily 5.00, monthly 100.125\n",
    )
    assert stored.daily_budget == Decimal("5")
    assert stored.monthly_budget == Decimal("100.125")
    assert cleared.output == "alice: daily -, monthly 100.125\n"
    assert account(app, "alice").daily_budget is None


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["alice"], 2, "give --daily, --monthly or both"),
        (["alice", "--daily", "-1"], 2, "a budget is 0 or more US dollars"),
        (["alice", "--daily", "ten"], 2, "not an amount in US dollars: 'ten'"),
        (["alice", "--monthly", "NaN"], 2, "a budget is 0 or more US dollars"),
        (["nobody", "--daily", "1"], 1, "no user 'nobody': see `flask users list`"),
    ],
)
def test_set_budget_refuses_bad_input(users_cli, args, code, message):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)
    result = users_cli("set-budget", *args)
    assert result.exit_code == code
    assert message in result.output


def test_set_role(app, users_cli):
    users_cli("create", "alice", "--password-stdin", input=PASSWORD)

    result = users_cli("set-role", "alice", "admin")

    assert (result.exit_code, result.output) == (0, "alice is now admin\n")
    assert account(app, "alice").role == "admin"
    assert users_cli("set-role", "alice", "root").exit_code == 2
