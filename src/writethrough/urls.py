"""Parse and validate ``source=`` and ``cache=`` URLs; show them without their secrets.

Secrets are masked from the parsed parts, never by searching the text for one encoding
of the password: :meth:`ParsedURL.redacted` (and ``repr``/``str``) rebuild the URL with
``***`` for the password and for options named like a secret (``password``, ``token``).
A URL that cannot be parsed is shown with everything up to its last ``@`` masked.
Driver messages that might echo a password go through :func:`scrub`, which matches the
password in any mix of its encodings (raw, percent-encoded in either case,
``+`` for a space, backslash-escaped as in a libpq conninfo).
"""

from __future__ import annotations

import functools
import importlib
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MASK = "***"
# Query options whose values are shown as *** (libpq's password, sslpassword; tokens).
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|auth|credential", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A host: letters and digits (any script), '.', '-', '_', '~', and '%' (PostgreSQL takes a
# percent-encoded socket directory as a host). IPv6 addresses go in brackets.
_HOST = re.compile(r"[\w.~%-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[\w.~-]+)?")  # with an optional zone (fe80::1%eth0)
# Secrets this short could also be a piece of an ordinary word ("p" in "port"): they are
# masked only where they stand apart from other letters and digits.
_SHORT_SECRET = 8


@dataclass(frozen=True, slots=True, repr=False)
class ParsedURL:
    """A URL split into parts; ``query`` holds the options.

    ``repr()`` and ``str()`` show :meth:`redacted`, never the password.
    """

    url: str
    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    path: str = ""
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL rebuilt from its parts with the password (and secret options) as ``***``.

            >>> parse_url("redis://u:s3cr!t@h:6379/0", kind="cache", schemes={"redis": ""}).redacted()
            'redis://u:***@h:6379/0'
        """
        return _display(self.scheme, self.username, self.password is not None,
                        ",".join(_host_text(h, p) for h, p in self.hosts), self.path,
                        list(self.query.items()))

    def __repr__(self) -> str:
        return f"ParsedURL({self.redacted()!r})"

    __str__ = __repr__

    def option(self, name: str, convert: Callable[[str], Any], default: Any) -> Any:
        """The option ``name`` converted, ``default`` if absent; ConfigError if it does not convert."""
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            return convert(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            shown = MASK if _SECRET_OPTION.search(name) else repr(raw)
            raise ConfigError(f"{self.redacted()}: option {name}={shown} is not valid: {exc}") from None


def parse_url(url: object, *, kind: str, schemes: Mapping[str, str]) -> ParsedURL:
    """Split ``url`` and check its scheme is one of ``schemes``.

    Several hosts may be given separated by commas (``redis+cluster://a:1,b:2``). An
    ``@``, ``/`` or ``?`` in a user name or password must be percent-encoded
    (``%40``, ``%2F``, ``%3F``): an ``@`` after the host is refused, as it is how an
    unencoded password shows. Each option may be given once.
    """
    if not isinstance(url, str) or not url:
        got = "an empty string" if url == "" else f"a {type(url).__name__}"
        raise ConfigError(f"{kind} URL must be a non-empty string, got {got}")
    if _CONTROL.search(url):
        raise ConfigError(f"{kind} URL {mask_unparsed(url)!r} contains a control character "
                          "(a newline, tab or NUL)")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"{kind} URL {mask_unparsed(url)!r} is malformed: expected scheme://...")
    scheme = scheme.lower()
    netloc, slash, tail = rest.partition("/")
    path, _, query_string = tail.partition("?")
    if "?" in netloc:  # "memory://?max_entries=10"
        netloc, _, query_string = netloc.partition("?")
        path, query_string = "", query_string + slash + tail
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, pw = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(pw) if pw else None
    try:
        pairs = urllib.parse.parse_qsl(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        pairs = []
        bad_query = True
    else:
        bad_query = False
    # An '@' after the host is where an unencoded password shows ("u:pa/ss@h" splits at
    # the '/'): then every message masks everything up to the last '@'.
    stray_at = "@" in path + query_string
    shown = mask_unparsed(url) if stray_at else _display(
        scheme, username, password is not None, netloc, path, pairs)
    if scheme not in schemes:
        known = ", ".join(sorted(schemes))
        raise ConfigError(f"unknown {kind} URL scheme {scheme!r} in {shown!r}; known: {known}")
    if netloc and stray_at:
        raise ConfigError(
            f"{kind} URL {shown!r} has an '@' after its host: percent-encode "
            "'@', '/' and '?' in the user name and password (%40, %2F, %3F)")
    if bad_query:
        raise ConfigError(f"{kind} URL {shown!r} has a malformed query")
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ConfigError(f"{kind} URL {shown!r} gives option {name!r} more than once")
        query[name] = value
    hosts = tuple(_split_host(part, kind, shown) for part in netloc.split(",")) if netloc else ()
    return ParsedURL(
        url=url,
        scheme=scheme,
        hosts=hosts,
        path=urllib.parse.unquote(path),
        username=username,
        password=password,
        query=query,
    )


def _split_host(part: str, kind: str, shown: str) -> tuple[str, int | None]:
    if part.startswith("["):  # [::1]:6379
        host, bracket, after = part[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(host) or (after and not after.startswith(":")):
            raise ConfigError(f"{kind} URL {shown!r} has a malformed IPv6 host {part!r} "
                              "(expected [address] or [address]:port)")
        port_text, has_port = after[1:], bool(after)
    else:
        host, colon, port_text = part.partition(":")
        has_port = bool(colon)
        if not host or not _HOST.fullmatch(host) or _CONTROL.search(urllib.parse.unquote(host)):
            what = "an empty host" if not host else f"an invalid host {host!r}"
            raise ConfigError(f"{kind} URL {shown!r} has {what}")
    if not has_port:
        return host, None
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigError(f"{kind} URL {shown!r} has an invalid port {port_text!r} (1-65535)")
    return host, int(port_text)


def _host_text(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _display(scheme: str, username: str | None, has_password: bool, netloc: str, path: str,
             pairs: list[tuple[str, str]]) -> str:
    """A URL for messages, from its parts: the password and secret options as ``***``."""
    user = urllib.parse.quote(username, safe="") if username else ""
    userinfo = f"{user}:{MASK}@" if has_password else (f"{user}@" if user else "")
    text = f"{scheme}://{userinfo}{netloc}"
    if path:
        text += "/" + path
    if pairs:
        text += "?" + "&".join(
            f"{name}={MASK if _SECRET_OPTION.search(name) else value}" for name, value in pairs)
    return text


def mask_unparsed(text: str) -> str:
    """A URL that could not be parsed, for a message: everything before its last ``@``
    (where a user name and password would be) as ``***``."""
    scheme, sep, rest = text.partition("://")
    if "@" not in text:
        return text
    if not sep:
        return f"{MASK}@{text.rpartition('@')[2]}"
    return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, in any mix of its encodings.

        >>> scrub("password='pg/SECRET' uri=postgres://u:pg%2fSECRET@h", "pg/SECRET")
        "password='***' uri=postgres://u:***@h"
    """
    for secret in secrets:
        if secret:
            text = _secret_pattern(secret).sub(MASK, text)
    return text


@functools.lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    parts = []
    for ch in secret:
        encoded = "".join(f"%{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        alternatives = [re.escape(ch), f"(?i:{re.escape(encoded)})"]
        if ch == " ":
            alternatives.append(r"\+")
        if ch in "'\\":  # libpq conninfo quoting; repr() doubles a backslash
            alternatives.append(re.escape("\\" + ch))
        parts.append("(?:" + "|".join(alternatives) + ")")
    body = "".join(parts)
    if len(secret) < _SHORT_SECRET:
        if secret[0].isalnum():
            body = r"(?<![^\W_])" + body
        if secret[-1].isalnum():
            body += r"(?![^\W_])"
    return re.compile(body)


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
