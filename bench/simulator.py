"""The product's simulator, with each text event stamped with the time it is sent.

``python -m bench.simulator --port P``. A text delta ``" word"`` leaves as
``"@<ns>@ word"``, where ``<ns>`` is ``time.monotonic_ns()`` when the event is
handed to the server; the clock is the machine's, so a client in another process
subtracts it from its own ``time.monotonic_ns()`` to get the delay added on the
way. Pace replies with the ``delay:MS`` directive.
"""

import argparse
import logging
import time

from werkzeug.serving import ThreadedWSGIServer, make_server

from app.simulator.server import create_simulator, default_streams_dir

TEXT_DELTA = b'"type":"text_delta","text":"'
# Hundreds of clients connect at once; werkzeug's default backlog is 128.
BACKLOG = 2048


def stamped(wsgi_app):
    """Wrap a WSGI app so that every text delta carries its send time."""

    def app(environ, start_response):
        return _stamp_chunks(wsgi_app(environ, start_response))

    return app


def _stamp_chunks(body):
    try:
        for chunk in body:
            if TEXT_DELTA in chunk:
                mark = b"%s@%d@" % (TEXT_DELTA, time.monotonic_ns())
                chunk = chunk.replace(TEXT_DELTA, mark)
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def main(argv=None):
    """Serve the stamping simulator until terminated."""
    parser = argparse.ArgumentParser(prog="python -m bench.simulator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)

    # A log line per request would cost more than the request at this rate.
    logging.basicConfig(level=logging.WARNING)
    app = create_simulator(default_streams_dir(), args.delay_ms)
    app.wsgi_app = stamped(app.wsgi_app)
    ThreadedWSGIServer.request_queue_size = BACKLOG
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
