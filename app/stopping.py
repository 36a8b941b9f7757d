"""Stopping cleanly: a stop signal ends the replies in flight and records them.

A chat socket never ends by itself, so a server told to stop would wait for it
until it is killed, and a reply still streaming would be lost with its usage.
The handlers set the app's ``tally.stopping`` event first: each chat then cuts
its reply short (closing the upstream stream), records what it used as a
partial call, tells the page, and closes; whatever handled the signal before
(gunicorn's graceful stop, KeyboardInterrupt) then runs as it would have.
"""

import os
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def install(app):
    """Chain a handler for each stop signal; call it from the main thread."""
    stopping = app.extensions["tally.stopping"]
    for signum in SIGNALS:
        signal.signal(signum, _chained(stopping, signal.getsignal(signum)))


def _chained(stopping, previous):
    def handler(signum, frame):
        stopping.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler
