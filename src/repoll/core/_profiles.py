"""What the server knows of particular clients, from their request's header fields.

Pure functions. Two things are known here:

* which clients do not resolve a relative ``Location`` (they get absolute
  operation URLs, see ``_origin``);
* what each common client can wait for when it follows redirects by itself
  (:class:`ClientProfile`): how many redirects it follows, how long it waits
  for one answer (read timeout) and for all of them (total timeout), and how
  often it visits the same URL before calling it a loop. Pacing spends that
  budget (``_pacing.plain_hold``, ``_pacing.follows_again``): every hold
  stays under the read timeout, and the last redirect the client can follow
  is replaced by a ``202`` it takes as success (protocol.md 5.6-5.8).

The defaults below are each client's own, as its documentation or source
states them; the sources are listed in docs/protocol.md, section 5.6.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Final

# azure-core's pollers (LROPoller and the Azure SDKs built on it) request a
# Location as it is, without resolving a relative reference against the
# request URL, so they get absolute operation URLs. Their pipelines mark
# every request with x-ms-client-request-id (azure-core's RequestIdPolicy,
# on by default) and, in the SDKs, a User-Agent starting "azsdk-".
_ABSOLUTE_LOCATION_AGENTS: Final = ("azsdk-",)
ABSOLUTE_LOCATION_MARKERS: Final = ("x-ms-client-request-id",)


def needs_absolute_location(user_agent: str, header_names: Container[str]) -> bool:
    """True for clients known not to resolve a relative ``Location``.

    ``header_names`` are the request's field names, lower-cased.
    """
    if user_agent.startswith(_ABSOLUTE_LOCATION_AGENTS):
        return True
    return any(marker in header_names for marker in ABSOLUTE_LOCATION_MARKERS)


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """A client's budget when it follows redirects by itself, at its defaults.

    ``agents`` are the product names (the part of a ``User-Agent`` product
    before ``/``, compared without case) that identify it. ``read_timeout``
    is how long it waits for one answer (None: for ever), ``total_timeout``
    how long for the whole request, every redirect included;
    ``same_url_repeats`` how many visits to one URL it takes for a loop
    (None: it does not check), which hop URLs make moot.
    """

    name: str
    max_redirects: int
    read_timeout: float | None = None
    total_timeout: float | None = None
    same_url_repeats: int | None = None
    agents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_redirects < 0:
            msg = f"profile {self.name!r}: need 0 <= max_redirects"
            raise ValueError(msg)
        for timeout in (self.read_timeout, self.total_timeout):
            if timeout is not None and not timeout > 0:
                msg = f"profile {self.name!r}: timeouts must be positive or None"
                raise ValueError(msg)


# In matching order: the first profile one of whose agents names a product of
# the User-Agent wins (PowerShell's User-Agent also starts with Mozilla/).
KNOWN_CLIENTS: Final = (
    ClientProfile("curl", 50, agents=("curl",)),  # with -L; --max-redirs, no timeout
    ClientProfile("wget", 20, read_timeout=900.0, agents=("wget",)),
    ClientProfile("requests", 30, agents=("python-requests",)),
    ClientProfile("httpx", 20, read_timeout=5.0, agents=("python-httpx",)),
    ClientProfile("urllib", 10, same_url_repeats=4, agents=("python-urllib",)),
    ClientProfile("aiohttp", 10, total_timeout=300.0, agents=("aiohttp",)),
    ClientProfile("go", 10, agents=("go-http-client",)),
    ClientProfile("node", 20, read_timeout=300.0, agents=("node", "undici")),
    ClientProfile("java", 5, agents=("java-http-client",)),
    ClientProfile("powershell", 5, agents=("powershell", "windowspowershell")),
    ClientProfile("browser", 20, read_timeout=300.0, agents=("mozilla",)),
)

# A client not in the table: 10 redirects, the limit of urllib, aiohttp, Go
# and Rust's reqwest (the common clients with the lowest limit, Java's and
# PowerShell's 5, are recognised above); a 5 s read timeout, httpx's, the
# shortest default among common clients, so that no hold outlasts it.
UNKNOWN_CLIENT: Final = ClientProfile("unknown", 10, read_timeout=5.0)


_COMMENT: Final = re.compile(r"\([^()]*\)")


def _products(user_agent: str) -> list[str]:
    """The product names of a User-Agent, lower-cased, comments left out."""
    names = []
    for word in _COMMENT.sub(" ", user_agent).split():
        name = word.split("/", 1)[0].lower()
        if name:
            names.append(name)
    return names


@functools.lru_cache(maxsize=512)
def profile_for(user_agent: str, extra: tuple[ClientProfile, ...] = ()) -> ClientProfile:
    """The profile of the client that sent ``user_agent``.

    ``extra`` (a deployment's own, ``PacingPolicy.profiles``) is searched
    before the built-in table, so it can add clients and replace defaults.
    """
    products = _products(user_agent[:512])
    for profile in (*extra, *KNOWN_CLIENTS):
        if any(agent.lower() in products for agent in profile.agents):
            return profile
    return UNKNOWN_CLIENT


_HOP_MAX_DIGITS: Final = 4


def parse_hop(query: str) -> int | None:
    """The ``hop`` of an operation URL's query (``hop=3``), or None.

    Lenient: the first ``hop`` parameter counts if it is 1 to 4 digits;
    anything else (absent, empty, signed, too long) is unknown.
    """
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if name == "hop" and sep:
            if 0 < len(value) <= _HOP_MAX_DIGITS and value.isascii() and value.isdigit():
                return int(value)
            return None
    return None


def hop_url(operation_url: str, hop: int) -> str:
    """The operation URL a redirect-following client is sent to on its ``hop``-th redirect."""
    return f"{operation_url}?hop={hop}"
