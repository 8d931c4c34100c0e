"""A logger of its own whose records a test reads back (no propagation, every level)."""

from __future__ import annotations

import logging


class Records(logging.Handler):
    """Keeps every record's level name and message, in order."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.lines]

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


def capturing_logger(name: str) -> tuple[logging.Logger, Records]:
    """The logger ``grd.test.<name>``, recording into the returned ``Records`` only."""
    logger = logging.getLogger(f"grd.test.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    return logger, records
