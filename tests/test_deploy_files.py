"""docker-compose.yml cannot be run here (no Docker engine): check what can be."""

import json
from pathlib import Path

import yaml

from app.runner import web_command

ROOT = Path(__file__).resolve().parent.parent


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_part_of_tally():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "flower"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["web"]["environment"]["TALLY_ENV"] == "production"
    assert services["web"]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"


def test_compose_commands_name_real_modules():
    services = compose()["services"]
    assert services["web"]["command"][-1] == "wsgi:app"
    assert services["worker"]["command"][:3] == ["celery", "-A", "celery_app"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert "--basic-auth=" in " ".join(services["flower"]["command"])
    for module in ("wsgi.py", "celery_app.py", "alembic.ini"):
        assert (ROOT / module).is_file()


def _worker_class(argv):
    return argv[argv.index("--worker-class") + 1]


def test_compose_and_the_image_serve_as_the_tested_command_does():
    # tests/test_served.py runs web_command: the deployments must use its worker.
    tested = _worker_class(web_command("127.0.0.1", 5000))
    image = json.loads(
        next(
            line.removeprefix("CMD ")
            for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.startswith("CMD ")
        )
    )
    assert tested == "gevent"
    assert _worker_class(compose()["services"]["web"]["command"]) == tested
    assert _worker_class(image) == tested
