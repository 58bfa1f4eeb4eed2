"""Running the app with uvicorn: in the foreground (the CLI) or on a background thread (tests, bench)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from .app import create_app
from .config import ServerConfig

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free port, read it back with getsockname())."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def exposure_warning(host: str, config: ServerConfig) -> str | None:
    if is_loopback(host) or config.api_key:
        return None
    return (
        f"serving on {host} without --api-key: anyone who can reach this address can use the model "
        "(bind 127.0.0.1, or set --api-key)"
    )


def _uvicorn(app, log_level: str) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=log_level == "debug",
            timeout_graceful_shutdown=5,
        )
    )


def serve(
    backend,
    tokenizer,
    spec,
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    prefill_chunk: int | None = None,
    log_level: str = "info",
    announce=print,
) -> None:
    """Serve until interrupted (blocking)."""
    warning = exposure_warning(host, config)
    if warning:
        log.warning("warning: %s", warning)
    app = create_app(backend, tokenizer, spec, config, prefill_chunk)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce(
        f"serving '{config.model_name}' ({backend.name}) on http://{shown}:{bound}/v1  (docs: http://{shown}:{bound}/docs)"
    )
    _uvicorn(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """The app on 127.0.0.1 and a free port, on a thread: ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning"):
        if not is_loopback(host):
            raise ValueError(f"BackgroundServer binds loopback addresses only, not {host}")
        self.app, self.host = app, host
        self.server = _uvicorn(app, log_level)
        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
