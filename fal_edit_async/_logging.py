"""The ``fal_edit_async`` logger, and ``FAL_EDIT_LOG`` to switch it on without code.

What is logged: one DEBUG line per HTTP request (method, URL, status, duration, request id),
from the core, which every request passes; INFO when a call is retried, a status stream is
reconnected, or a job falls back to polling. The key is never logged: URLs never hold it,
no header is logged, and errors are scrubbed before anyone sees them.

Like ``OPENAI_LOG`` in openai-python: ``FAL_EDIT_LOG=debug`` (or ``info``) gives the logger a
handler on stderr at that level the first time a client is built. Without it the library
adds no handler, so the application's own logging configuration decides, as it should.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["LOG_ENVIRONMENT", "logger", "setup_from_env"]

#: The environment variable read by :func:`setup_from_env`.
LOG_ENVIRONMENT = "FAL_EDIT_LOG"

logger = logging.getLogger("fal_edit_async")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


class _EnvHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``FAL_EDIT_LOG`` adds: marked, so it is added once however many clients."""


def setup_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Honour ``FAL_EDIT_LOG`` (``debug`` or ``info``, any case); other values are ignored.

    Adds one stderr handler to the ``fal_edit_async`` logger and sets its level; calling it
    again (each new client does) changes nothing but the level.
    """
    env = os.environ if environ is None else environ
    level = _LEVELS.get(env.get(LOG_ENVIRONMENT, "").strip().lower())
    if level is None:
        return
    logger.setLevel(level)
    if not any(isinstance(h, _EnvHandler) for h in logger.handlers):
        handler = _EnvHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
