"""Run the Messages API simulator in the foreground: ``python -m app.simulator``."""

import argparse
import contextlib
import logging

from werkzeug.serving import make_server

from app.simulator.server import create_simulator, default_streams_dir


def main(argv=None):
    """Serve the simulator until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m app.simulator", description=main.__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--streams-dir", default=default_streams_dir())
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    app = create_simulator(args.streams_dir, args.delay_ms)
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"simulator on http://{args.host}:{server.server_port}", flush=True)
    print(f"replaying from {args.streams_dir or '(no streams folder)'}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
