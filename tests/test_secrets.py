"""Passwords never reach an error, a log line, a repr(), JSON output or a child's argv.

Every password below is checked in each of its encodings (raw, percent-encoded in either
case), so a mask that only matched one spelling fails here.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import writethrough
from servers import ServerUnavailable, _launch, free_port, unavailable
from writethrough import ConfigError, WritethroughError, urls
from writethrough.caches import BACKENDS as CACHES
from writethrough.sources import BACKENDS as SOURCES
from writethrough.urls import parse_url

# Each a password as the user means it; the URL carries it percent-encoded where needed.
PASSWORDS = ["s3cr!t-Pass", "pg/SECRET-x", "p@ss?w#rd-1", "it's a \\secret", "pässwört-99"]


def spellings(password: str) -> set[str]:
    quoted = urllib.parse.quote(password, safe="")
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quoted)
    return {password, quoted, lower, urllib.parse.quote_plus(password),
            urllib.parse.quote(password, safe="!'")}


def assert_hidden(text: str, password: str) -> None:
    for spelling in spellings(password):
        assert spelling not in text, f"{spelling!r} leaked in {text!r}"


def encoded(password: str) -> str:
    return urllib.parse.quote(password, safe="")


# -- URLs that fail to parse or to open -------------------------------------------------

BAD_URLS = [
    ("cache", "redsi://u:{pw}@localhost:6379/0"),  # unknown scheme
    ("cache", "redis://u:{pw}@localhost:99999/0"),  # invalid port
    ("cache", "redis://u:{pw}@localhost:port/0"),
    ("cache", "redis://u:{pw}@[::1/0"),  # unclosed bracket
    ("cache", "redis://u:{pw}@localhost:6379/0?bogus=1"),  # unknown option
    ("cache", "redis://u:{pw}@localhost:6379/0?socket_timeout=nan"),  # bad option value
    ("cache", "redis://u:{pw}@localhost:6379/99"),  # database out of range
    ("cache", "redis://u:{pw}@localhost:6379/0?socket_timeout=1&socket_timeout=2"),
    ("cache", "redis://u:{pw}@a:1,b:2/0"),  # two hosts on redis://
    ("cache", "memory://u:{pw}@/"),
    ("source", "postgresql://u:{pw}@[::1/test"),
    ("source", "postgresql://u:{pw}@localhost/test?pool_max=0"),
    ("source", "postgresql://u:{pw}@localhost/test?colour=red"),
    ("source", "postgresql://u:{pw}@localhost/test?sslmode=bogus"),
    ("source", "sqlite://u:{pw}@host/x.db"),
    ("source", "mysql://u:{pw}@localhost/test"),
    ("source", "postgres:/u:{pw}@localhost/test"),  # malformed: one slash
]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(("kind", "template"), BAD_URLS)
def test_bad_urls_never_show_the_password(kind: str, template: str, password: str) -> None:
    url = template.format(pw=encoded(password))
    options = {"source": "sqlite:///:memory:", "cache": "memory://", kind: url}
    with pytest.raises(ConfigError) as caught:
        writethrough.open(**options).close()
    assert_hidden(str(caught.value), password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_unencoded_password_is_refused_without_showing_it(password: str) -> None:
    """'/', '?' or '@' left raw in a password make the host unparseable: say how to fix it,
    and show nothing of what came before the host."""
    port = free_port()
    for url in (f"redis://u:{password}@localhost:{port}/0",
                f"postgresql://u:{password}@127.0.0.1:{port}/db?connect_timeout=1"):
        kind = "cache" if url.startswith("redis") else "source"
        try:  # a password that needs no encoding parses, and then the server is down
            writethrough.open(**{"source": "sqlite:///:memory:", kind: url}).close()
        except WritethroughError as exc:
            assert_hidden(str(exc), password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_parsed_urls_show_only_the_mask(password: str) -> None:
    url = f"rediss://user:{encoded(password)}@cache.example:6380/2?socket_timeout=0.2"
    parsed = parse_url(url, kind="cache", schemes=CACHES)
    assert parsed.password == password
    for text in (parsed.redacted(), repr(parsed), str(parsed), f"{parsed}", repr([parsed])):
        assert_hidden(text, password)
    assert parsed.redacted() == "rediss://user:***@cache.example:6380/2?socket_timeout=0.2"


def test_secret_options_are_masked_too() -> None:
    parsed = parse_url("postgresql://h/db?password=hunter2-long&sslpassword=abc-secret&table=t",
                       kind="source", schemes=SOURCES)
    assert parsed.redacted() == "postgresql://h/db?password=***&sslpassword=***&table=t"
    with pytest.raises(ConfigError) as caught:
        writethrough.open(source="postgresql://h/db?password=hunter2-long")
    assert "hunter2" not in str(caught.value)


def test_unparseable_urls_are_masked_up_to_the_last_at() -> None:
    assert urls.mask_unparsed("redis:/u:pw@host/0") == "***@host/0"
    assert urls.mask_unparsed("redis://u:p@ss@host/0") == "redis://***@host/0"
    assert urls.mask_unparsed("memory") == "memory"


@pytest.mark.parametrize("password", PASSWORDS)
def test_scrub_finds_every_spelling(password: str) -> None:
    conninfo = psycopg.conninfo.make_conninfo(host="h", password=password)
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded(password))
    text = (f"raw {password}; url u:{encoded(password)}@h; lower {lower}; "
            f"plus {urllib.parse.quote_plus(password)}; conninfo {conninfo}; repr {password!r}")
    scrubbed = urls.scrub(text, password)
    assert_hidden(scrubbed, password)
    assert password.replace("\\", "\\\\") not in scrubbed  # repr() doubles the backslash


def test_scrub_of_a_short_password_leaves_ordinary_words_alone() -> None:
    text = "connection to server at ::1, port 5432 failed: password=p"
    assert urls.scrub(text, "p") == "connection to server at ::1, port 5432 failed: password=***"


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_errors_and_reprs_hold_no_password() -> None:
    from writethrough.capture.pg import PgTarget
    from writethrough.sources.postgres import map_error

    password = "pg/SECRET-x"
    down = f"postgresql://app:{encoded(password)}@127.0.0.1:{free_port()}/db?connect_timeout=1"
    with pytest.raises(writethrough.SourceUnavailable) as caught:
        writethrough.open(source=down)
    assert_hidden(str(caught.value), password)
    target = PgTarget.parse(down)
    assert_hidden(repr(target), password)
    assert target.password == password  # still there for libpq, just never shown
    # A driver message that echoes the DSN (libpq does for some parse errors).
    echoed = psycopg.OperationalError(f'invalid connection option "x" in "{target.conninfo}"')
    assert_hidden(str(map_error(echoed, target.where, target.password)), password)


@pytest.mark.postgres
def test_the_async_postgres_source_repr_holds_no_password() -> None:
    from writethrough.sources.postgres import async_from_url

    password = "pg/SECRET-x"
    url = f"postgresql://app:{encoded(password)}@127.0.0.1:5432/db"
    source = async_from_url(parse_url(url, kind="source", schemes=SOURCES), namespace="ns")
    assert_hidden(repr(source), password)
    assert_hidden(source.where, password)


# -- a Redis user with a password ---------------------------------------------------------

REDIS_PASSWORD = "pg/SECRET!x%y"  # one argv element, no quotes: redis-server's config syntax


@pytest.fixture(scope="module")
def secret_redis() -> Iterator[str]:
    """A throwaway redis-server with an ACL user ``wt`` whose password needs encoding."""
    try:
        process = _launch(["--user", "wt", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"], set())
    except ServerUnavailable as exc:
        unavailable(f"redis-server: {exc}")
    try:
        # Lower-case escapes (%2f), as people type them: a mask matching one spelling misses it.
        lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded(REDIS_PASSWORD))
        yield f"redis://wt:{lower}@127.0.0.1:{process.port}/0"
    finally:
        process.cleanup()


@pytest.mark.redis
def test_the_password_user_really_authenticates(secret_redis: str) -> None:
    with writethrough.open(source="sqlite:///:memory:", cache=secret_redis + "?socket_timeout=1",
                           namespace="secret") as store:
        assert store.put("k", 1).cache is not writethrough.CacheOutcome.PENDING_REPAIR
        assert store.get("k") == 1
        assert store.put("k", 2).cache is writethrough.CacheOutcome.UPDATED
        assert store.stats.cache_write_failures == 0


@pytest.mark.redis
def test_a_wrong_redis_password_is_reported_without_it(secret_redis: str) -> None:
    wrong = "wr0ng/Password!"
    url = secret_redis.split("@")[0].rsplit(":", 1)[0] + f":{encoded(wrong)}@" + (
        secret_redis.split("@")[1] + "?socket_timeout=1")
    from writethrough.caches import open_cache

    cache = open_cache(url)
    try:
        with pytest.raises(writethrough.CacheError) as caught:
            cache.get("wt:x:k")
    finally:
        cache.close()
    text = str(caught.value) + repr(caught.value.__cause__)
    assert_hidden(text, wrong)
    assert_hidden(text, REDIS_PASSWORD)


@pytest.mark.redis
def test_compare_json_shows_the_cache_url_masked(secret_redis: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from writethrough.cli import main

    url = secret_redis + "?socket_timeout=1"
    assert main(["compare", "--json", "--updates", "20", "--keys", "5", "--cache", url]) == 0
    out, err = capsys.readouterr()
    assert_hidden(out + err, REDIS_PASSWORD)
    shown: dict[str, Any] = json.loads(out)
    assert shown["workload"]["cache"].startswith("redis://wt:***@127.0.0.1:")


@pytest.mark.redis
def test_the_redis_acl_in_security_md_is_enough() -> None:
    """The least-privileged Redis user SECURITY.md gives runs the versioned protocol,
    including a script reload after SCRIPT FLUSH, and may touch nothing else."""
    from pathlib import Path

    import redis

    text = (Path(__file__).parent.parent / "SECURITY.md").read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.startswith("ACL SETUSER app "))
    rules = line.split()[3:]  # after "ACL SETUSER app"
    rules = [">app-pass-1" if rule == ">password" else rule for rule in rules]
    try:
        process = _launch(["--user", "app", *rules], set())
    except ServerUnavailable as exc:
        unavailable(f"redis-server: {exc}")
    try:
        url = f"redis://app:app-pass-1@127.0.0.1:{process.port}/0?socket_timeout=1"
        for round_ in range(2):
            with writethrough.open(source="sqlite:///:memory:", cache=url,
                                   namespace=f"acl{round_}") as store:
                store.put("k", 1)
                assert store.get("k") == 1
                assert store.put("k", 2).cache is writethrough.CacheOutcome.UPDATED
                assert store.delete("k").cache is writethrough.CacheOutcome.INVALIDATED
                assert store.get("k") is None
                assert store.stats.cache_write_failures == 0
                assert store.stats.cache_read_failures == 0
            with redis.Redis(port=process.port) as admin:
                assert admin.acl_log() == [], "a command the ACL denied"
                admin.script_flush()  # the next round reloads the script
        with redis.Redis(port=process.port, username="app", password="app-pass-1") as app:
            for command in (("SET", "other", "1"), ("FLUSHALL",), ("KEYS", "*")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    app.execute_command(*command)
    finally:
        process.cleanup()


@pytest.mark.redis
def test_chaos_writers_get_their_urls_on_stdin_not_argv(secret_redis: str, tmp_path: Any) -> None:
    """A child's argv is world-readable (ps, /proc/<pid>/cmdline): the killed writers of
    ``writethrough chaos`` take their config, URLs with passwords included, on stdin."""
    import signal

    from writethrough.tools.chaos.phase import spawn_writer

    config = {"source": f"sqlite:///{tmp_path}/w.db", "cache": secret_redis + "?socket_timeout=1",
              "namespace": "chaoswriter", "strategy": "write-through", "protocol": "versioned",
              "durability": "best-effort", "key": "k", "rounds": 2, "pause": 0.05}
    proc = spawn_writer(config)
    try:
        argv = " ".join(map(str, proc.args))  # type: ignore[arg-type]
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                argv += f.read().replace(b"\0", b" ").decode()
        except FileNotFoundError:  # already gone: proc.args is what it was started with
            pass
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "redis://" not in argv and "sqlite://" not in argv
    assert_hidden(argv, REDIS_PASSWORD)
    assert proc.returncode == -signal.SIGKILL, err  # it ran to the planned kill
    assert len(out.splitlines()) >= 4, "two rounds of a write and a read, as JSON lines"
