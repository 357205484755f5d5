"""The demo's log lines: each stamped with the time in UTC, whatever the host's zone."""

from __future__ import annotations

import logging
import time

# ISO 8601, in UTC (the Z), to the millisecond.
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class UTCFormatter(logging.Formatter):
    """A formatter whose ``asctime`` is UTC (``converter = time.gmtime``)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(FORMAT, DATE_FORMAT)
