"""Where an operation URL points: a path, or an absolute URL the client can reach.

Pure functions, no I/O. The question is which origin the *client* used,
which the request does not always say: a reverse proxy usually rewrites
``Host`` to the backend's name (nginx does by default) and terminates TLS, so
an absolute URL built from ``Host`` and the ASGI scheme can name an address
the client cannot reach, or downgrade it to ``http://``.

So operation URLs are paths by default (``/operations/{id}``, below the ASGI
``root_path``): RFC 9110 lets ``Location`` be relative, every mainstream
client and browser resolves it against the URL it requested, and a path is
right behind any proxy that does not rewrite paths. An absolute URL is sent
only when it is asked for (``UrlPolicy(absolute_urls=True)``), when a public base URL is
configured, or to a client known not to resolve relative references; it is
then built from, in order of preference:

1. the configured public base URL;
2. ``Forwarded`` (RFC 7239) or ``X-Forwarded-Host``/``-Proto``/``-Prefix``, but
   only from a peer listed as a trusted proxy (a client could send them too);
3. ``Host`` and the ASGI scheme.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._profiles import ABSOLUTE_LOCATION_MARKERS, needs_absolute_location

# A Host value safe to echo in Location: a name or address and a port, no more.
_HOST_RE: Final = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)
# A path prefix safe to put in front of the operation path.
_PREFIX_RE: Final = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")
# Forwarding headers longer than this are ignored whole: real ones are short,
# and the parsing below stays linear in a bounded input.
_MAX_FORWARDED_LENGTH: Final = 1024


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed: addresses, networks, or ``*``."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    everyone: bool = False

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> TrustedProxies:
        """From ``"127.0.0.1, 10.0.0.0/8"``, a list of the same, or ``"*"``.

        Raises ValueError for an entry that is not an address or a network.
        """
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        networks = []
        everyone = False
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                everyone = True
                continue
            networks.append(ipaddress.ip_network(entry, strict=False))
        return cls(tuple(networks), everyone)

    def trusts(self, peer: str | None) -> bool:
        if self.everyone:
            return True
        if not peer or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket path, say: not an IP peer
            return False
        return any(address in network for network in self.networks)


LOOPBACK: Final = TrustedProxies.parse("127.0.0.1, ::1")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a trusted proxy says about the client's request."""

    scheme: str | None = None
    host: str | None = None
    prefix: str | None = None


def _first(values: Iterable[str]) -> str | None:
    """The first list element of the first field: what the client-side proxy saw."""
    for value in values:
        if len(value) > _MAX_FORWARDED_LENGTH:
            return None
        return value.split(",", 1)[0].strip() or None
    return None


def parse_forwarded(
    *,
    forwarded: Iterable[str] = (),
    x_forwarded_host: Iterable[str] = (),
    x_forwarded_proto: Iterable[str] = (),
    x_forwarded_prefix: Iterable[str] = (),
) -> Forwarded:
    """The client's scheme, host and path prefix from forwarding headers.

    ``Forwarded`` wins over the ``X-Forwarded-*`` fields. Values that are not
    a plain host (and port), ``http``/``https``, or a clean path are dropped.
    """
    scheme = host = prefix = None
    element = _first(forwarded)
    if element is not None:
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            value = value.strip().strip('"')
            match name.strip().lower():
                case "proto":
                    scheme = value.lower()
                case "host":
                    host = value
    if host is None:
        host = _first(x_forwarded_host)
    if scheme is None:
        proto = _first(x_forwarded_proto)
        scheme = proto.lower() if proto else None
    raw_prefix = _first(x_forwarded_prefix)
    if raw_prefix is not None:
        raw_prefix = "/" + raw_prefix.strip("/") if raw_prefix.strip("/") else ""
        prefix = raw_prefix if _PREFIX_RE.fullmatch(raw_prefix) else None
    return Forwarded(
        scheme=scheme if scheme in {"http", "https"} else None,
        host=host if host is not None and is_safe_host(host) else None,
        prefix=prefix,
    )


def is_safe_host(host: str) -> bool:
    """True for a host name or IP literal with an optional port, and nothing else."""
    return len(host) <= 300 and _HOST_RE.fullmatch(host) is not None


def operation_url(
    path: str,
    *,
    absolute: bool,
    public_url: str | None,
    scheme: str,
    host: str | None,
    forwarded: Forwarded | None,
) -> str:
    """The URL to send in ``Location`` for an operation at ``path`` (from the app's root).

    ``forwarded`` is what a trusted proxy said (None if the peer is not
    trusted). A path is returned unless ``absolute`` or ``public_url`` asks
    otherwise, or when no safe host is known.
    """
    if public_url:
        return public_url.rstrip("/") + path
    if forwarded is not None and forwarded.prefix:
        # The proxy strips this prefix on the way in; the client must send it.
        path = forwarded.prefix + path
    if not absolute:
        return path
    if forwarded is not None:
        scheme = forwarded.scheme or scheme
        host = forwarded.host or host
    if not host or not is_safe_host(host):
        return path
    return f"{scheme}://{host}{path}"


_FORWARDING_FIELDS: Final = frozenset(
    {b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-prefix"}
)
_CLIENT_MARKERS: Final = frozenset(name.encode() for name in ABSOLUTE_LOCATION_MARKERS)


class OperationUrls:
    """``urls(scope, operation_id)``: the operation URL for a request, from its scope.

    Reads the ASGI scope as data (no I/O): its ``root_path``, scheme, client
    address and header fields, in one pass, since this runs for every start
    and every answer.
    """

    def __init__(
        self,
        *,
        operations_path: str,
        absolute: bool,
        public_url: str | None,
        trusted: TrustedProxies,
    ) -> None:
        self.operations_path = operations_path
        self.absolute = absolute
        self.public_url = public_url.rstrip("/") if public_url else None
        self.trusted = trusted
        self._peers: dict[str | None, bool] = {}

    def __call__(self, scope: Mapping[str, Any], operation_id: str) -> str:
        path = f"{scope.get('root_path', '')}{self.operations_path}/{operation_id}"
        host = user_agent = ""
        markers: set[str] = set()
        forwarding: dict[bytes, list[str]] | None = None
        for name, raw_value in scope.get("headers", ()):
            if name == b"host":
                host = host or raw_value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = user_agent or raw_value.decode("latin-1")
            elif name in _FORWARDING_FIELDS:
                forwarding = forwarding or {}
                forwarding.setdefault(name, []).append(raw_value.decode("latin-1"))
            elif name in _CLIENT_MARKERS:
                markers.add(name.decode("latin-1"))
        forwarded: Forwarded | None = None
        if forwarding is not None and self._trusts(scope.get("client")):
            forwarded = parse_forwarded(
                forwarded=forwarding.get(b"forwarded", ()),
                x_forwarded_host=forwarding.get(b"x-forwarded-host", ()),
                x_forwarded_proto=forwarding.get(b"x-forwarded-proto", ()),
                x_forwarded_prefix=forwarding.get(b"x-forwarded-prefix", ()),
            )
        return operation_url(
            path,
            absolute=self.absolute or needs_absolute_location(user_agent, markers),
            public_url=self.public_url,
            scheme=str(scope.get("scheme", "http")),
            host=host or None,
            forwarded=forwarded,
        )

    def _trusts(self, client: Any) -> bool:
        peer = client[0] if client else None
        trusted = self._peers.get(peer)
        if trusted is None:
            trusted = self.trusted.trusts(peer)
            if len(self._peers) > 4096:
                self._peers.clear()
            self._peers[peer] = trusted
        return trusted
