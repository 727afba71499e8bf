"""The garbage collector's pace for a busy server: ``$REPOLL_GC_THRESHOLD``.

Python collects its youngest generation each time 700 more container objects
have been allocated than freed. A server with a few dozen requests in flight
always holds that many between two turns of its event loop (tasks,
coroutines, futures, scopes, records waiting for their write), so it collects
every few requests, and each pass walks whatever is in flight. On a start
that waits for SQLite's write, that was a tenth of the server's time
(docs/performance.md). With the threshold at 50,000 a pass comes far less
often (and walks more: a millisecond or two); cyclic garbage, rare in a
request, is still collected, in bounded amounts. ``gc.freeze()`` then moves
what startup allocated (modules, the app) out of the full collections.

``repoll serve`` sets ``REPOLL_GC_THRESHOLD=50000`` unless it is set already;
any deployment may set it (``0`` leaves Python's default). The server applies
it when it opens, in every worker process.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping

logger = logging.getLogger("repoll")

GC_THRESHOLD_ENV = "REPOLL_GC_THRESHOLD"
SERVE_GC_THRESHOLD = 50_000
_frozen = False


def tune_gc(environ: Mapping[str, str]) -> int | None:
    """Apply ``$REPOLL_GC_THRESHOLD`` to this process; the threshold set, or None."""
    global _frozen  # noqa: PLW0603 - once per process, whoever opens first
    value = environ.get(GC_THRESHOLD_ENV, "").strip()
    if not value:
        return None
    try:
        threshold = int(value)
    except ValueError:
        logger.warning("$%s=%r is not a whole number: ignored", GC_THRESHOLD_ENV, value)
        return None
    if threshold <= 0:
        return None
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    if not _frozen:
        _frozen = True
        gc.freeze()
    return threshold
