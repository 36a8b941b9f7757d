"""A Celery worker for the benchmarks: the product's worker plus a ready line.

``python -m bench.worker --pool solo --concurrency 1``; the settings come from the
environment, as for ``celery -A celery_app worker``.
"""

import sys
import uuid

from celery.signals import worker_ready

from celery_app import celery


@worker_ready.connect
def _say_ready(**_kwargs):
    # The parent waits for this line before it starts the clock.
    print("bench: worker ready", flush=True)


def main(argv):
    celery.worker_main(
        [
            "worker",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
            *argv,
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
