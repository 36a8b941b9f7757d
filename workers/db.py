"""The worker's own database engine, created once per worker process."""

from celery.signals import worker_process_init

from app.db import make_engine, make_session_factory

_factory = None


def session_factory(settings):
    global _factory
    if _factory is None:
        _factory = make_session_factory(make_engine(settings.database_url))
    return _factory


@worker_process_init.connect
def _fresh_engine_after_fork(**_kwargs):
    # A forked child must not share the parent's pooled connections.
    global _factory
    if _factory is not None:
        _factory.kw["bind"].dispose(close=False)
    _factory = None
