"""An OpenAI-compatible HTTP server over one runtime backend (``autoglm-export serve``).

Needs the ``serve`` extra (fastapi, uvicorn). It takes a backend, tokenizer and spec exactly as
``Session`` does, so it serves any bundle the runtime can run, or the eager model.
"""

from .app import create_app
from .config import ServerConfig
from .serve import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServerConfig", "create_app", "serve"]
