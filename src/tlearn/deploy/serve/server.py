"""uvicorn around the app: Ctrl-C (or SIGTERM) stops taking connections, lets the requests in
flight finish and the batcher run what it holds, then returns."""

from __future__ import annotations

from collections.abc import Callable

from tlearn.deploy.extras import require
from tlearn.errors import TlearnError


def run_server(
    app, host: str = "127.0.0.1", port: int = 8000, *, log: Callable[[str], None] = print
) -> None:
    uvicorn = require("uvicorn")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=30,
        access_log=False,
    )
    server = uvicorn.Server(config)
    log(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has drained
        pass
    except SystemExit:  # uvicorn's answer to a port it cannot bind
        if server.started:
            raise
    if not server.started:
        raise TlearnError(f"cannot listen on {host}:{port}: is the port in use? pass --port N")
    log("stopped: every request in flight was answered")
