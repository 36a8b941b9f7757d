"""Tally under werkzeug's threaded server, the setup ``flask run`` gives.

``python -m bench.webserver --port P``; settings come from the environment.
"""

import argparse
import logging

from werkzeug.serving import ThreadedWSGIServer, make_server

from bench.simulator import BACKLOG


def main(argv=None):
    """Serve wsgi:app with a thread per connection until terminated."""
    parser = argparse.ArgumentParser(prog="python -m bench.webserver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    from wsgi import app

    ThreadedWSGIServer.request_queue_size = BACKLOG
    make_server("127.0.0.1", args.port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    main()
