"""What the server knows of particular clients, from their request's header fields.

Pure functions. Most clients need nothing special; the ones recognised here
break a rule the protocol otherwise relies on.
"""

from __future__ import annotations

from collections.abc import Container
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
