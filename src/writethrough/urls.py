"""Parse and validate ``source=`` and ``cache=`` URLs."""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A URL split into parts; ``query`` holds the options (last value wins)."""

    url: str
    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    path: str = ""
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        if self.password is None:
            return self.url
        return self.url.replace(":" + urllib.parse.quote(self.password, safe="") + "@", ":***@", 1)

    def option(self, name: str, convert: Callable[[str], Any], default: Any) -> Any:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.redacted()}: option {name}={raw!r} is not valid: {exc}") from None


def parse_url(url: object, *, kind: str, schemes: Mapping[str, str]) -> ParsedURL:
    """Split ``url`` and check its scheme is one of ``schemes``.

    Several hosts may be given separated by commas (``redis+cluster://a:1,b:2``).
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{kind} URL must be a non-empty string, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"{kind} URL {url!r} is malformed: expected scheme://...")
    scheme = scheme.lower()
    if scheme not in schemes:
        known = ", ".join(sorted(schemes))
        raise ConfigError(f"unknown {kind} URL scheme {scheme!r} in {url!r}; known: {known}")
    netloc, _, tail = rest.partition("/")
    path, _, query_string = tail.partition("?")
    if "?" in netloc:  # "memory://?max_entries=10"
        netloc, _, query_string = netloc.partition("?")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, pw = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(pw) if pw else None
    hosts: list[tuple[str, int | None]] = []
    for part in filter(None, netloc.split(",")):
        host, port = _split_host(part, url)
        hosts.append((host, port))
    try:
        pairs = urllib.parse.parse_qsl(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ConfigError(f"{kind} URL {url!r} has a malformed query: {exc}") from None
    return ParsedURL(
        url=url,
        scheme=scheme,
        hosts=tuple(hosts),
        path=urllib.parse.unquote(path),
        username=username,
        password=password,
        query=dict(pairs),
    )


def _split_host(part: str, url: str) -> tuple[str, int | None]:
    if part.startswith("["):  # [::1]:6379
        host, _, after = part[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ConfigError(f"URL {url!r} has an empty host")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"URL {url!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def load_factory(target: str, scheme: str) -> Callable[..., Any]:
    """Import ``module:function`` lazily, turning a missing driver into a ConfigError."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"redis": "redis", "rediss": "redis", "postgresql": "postgres"}.get(
            scheme.split("+")[0], scheme
        )
        raise ConfigError(
            f"the {scheme!r} backend needs a driver that is not installed ({exc.name}); "
            f"install it with: pip install 'writethrough[{extra}]'"
        ) from exc
    factory: Callable[..., Any] = getattr(module, attr)
    return factory
