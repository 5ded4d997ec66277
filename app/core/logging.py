"""Log set-up for our own loggers; uvicorn configures its own, and its access log is kept
free of sign-in tokens."""

from __future__ import annotations

import logging
import re

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# `?token=<jwt>` signs a browser in (`app.api.signin`); the redirect drops it from the URL,
# but uvicorn's access log wrote the request line with it, a bearer credential in plain text.
_TOKEN_PARAMETER = re.compile(r"([?&]token=)[^&\s]*")


class _SignInTokensRedacted(logging.Filter):
    """uvicorn logs `'%s - "%s %s HTTP/%s" %d'` with the path and query as its third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str) and "token=" in args[2]:
            record.args = (*args[:2], _TOKEN_PARAMETER.sub(r"\1[redacted]", args[2]), *args[3:])
        return True


def configure_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("app")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _SignInTokensRedacted) for f in access.filters):
        access.addFilter(_SignInTokensRedacted())
