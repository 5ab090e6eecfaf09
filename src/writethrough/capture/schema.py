"""Install and uninstall change capture on a table, with least privilege.

    from writethrough.capture import install, uninstall
    install("postgresql://owner@db/app", "profiles", "id")                       # logical
    install("postgresql://owner@db/app", "profiles", "id", capture="triggers")   # fallback
    uninstall("postgresql://owner@db/app", "profiles")   # also after DROP TABLE profiles

What lands on the table (one transaction, idempotent, run it again to switch modes):

* a bigint version column (added if missing) and ``BEFORE INSERT`` / ``BEFORE UPDATE``
  row triggers setting it from one sequence, ``writethrough_versions`` (increments of 2,
  never reset, so a re-inserted key, a TRUNCATE or a re-created table never goes back).
  An UPDATE that sets the version itself (``SET ..., version = version + 1``) skips the
  function call: the trigger's ``WHEN`` accepts a version above the row's and not above
  the sequence (:func:`version_kept`), and draws one otherwise;
* ``capture="logical"``: a publication of the table (insert, update, delete, truncate)
  that listeners stream through a logical replication slot with ``pgoutput``;
* ``capture="triggers"``: statement-level ``AFTER`` triggers (transition tables) writing
  one ``writethrough_changes`` row per changed key -- no version, no payload: the
  listener reads both from the table; it polls. ``notify=True`` adds one ``pg_notify``
  per statement (folded into one per transaction) to wake it at once -- measured at
  0.13-0.17x the write throughput with pgbench: NOTIFY serializes every committing
  transaction on one lock, fsync included. A TRUNCATE writes one row with a NULL key.

Least privilege: every function is ``SECURITY INVOKER`` (it runs as the role writing
the table, with that role's rights, never the installer's) and does no DML on the
user's table; EXECUTE is revoked from PUBLIC (trigger functions fire without it, so
nobody can attach them elsewhere); the change-recording function checks ``TG_RELID``.
Both name everything schema-qualified, operators included (``OPERATOR(pg_catalog.=)``),
instead of pinning ``search_path`` with a ``SET`` clause (which costs 2-3x on a bulk
UPDATE): an invoker's ``search_path`` cannot redirect them.
Writers need USAGE on the sequence and INSERT on ``writethrough_changes`` (granted to
PUBLIC); a row-level security policy lets a role record changes only of tables it may
write. The shared objects are created in the installer's ``current_schema()``; one that
already exists must be owned by the installing role or a superuser, else install refuses
(another role's table there could carry its own triggers, which would run as whoever
writes it).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from psycopg import errors as pg
from psycopg import sql

from .. import epochs
from ..errors import ConfigError
from ..sources import registry
from .pg import (
    Connection,
    PgTarget,
    TableShape,
    find_table,
    identifier,
    inspect_table,
    table_identifier,
    table_tag,
)

Capture = Literal["logical", "triggers"]
SEQUENCE = "writethrough_versions"
CHANGES = "writethrough_changes"
PARKED = "writethrough_parked"
EPOCHS = "writethrough_epochs"
REGISTRY = registry.REGISTRY_TABLE  # writethrough_namespaces
CHANNEL = "writethrough_changes"
VERSION_TRIGGER = "writethrough_version"  # BEFORE INSERT: always draws
VERSION_UPDATE_TRIGGER = "writethrough_version_update"  # BEFORE UPDATE: unless the statement did
CHANGE_TRIGGERS = ("writethrough_insert", "writethrough_update", "writethrough_delete",
                   "writethrough_truncate")
# Triggers of the first design (per-row events + NOTIFY, SECURITY DEFINER): dropped on sight.
OLD_TRIGGERS = ("writethrough_event",)


@dataclass(frozen=True, slots=True)
class Objects:
    """The shared objects, schema-qualified (they live in one schema)."""

    schema: str

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    @property
    def sequence(self) -> sql.Identifier:
        return self.ident(SEQUENCE)

    @property
    def sequence_regclass(self) -> sql.Composed:
        """``'"schema"."writethrough_versions"'::pg_catalog.regclass`` (a plan-time constant)."""
        quoted = f'"{self.schema}"."{SEQUENCE}"'
        return sql.SQL("{}::pg_catalog.regclass").format(sql.Literal(quoted))

    @property
    def changes(self) -> sql.Identifier:
        return self.ident(CHANGES)

    @property
    def parked(self) -> sql.Identifier:
        return self.ident(PARKED)

    @property
    def epochs(self) -> sql.Identifier:
        return self.ident(EPOCHS)


def objects_of(conn: Connection) -> Objects:
    """The objects of the current role's ``current_schema()`` (where install put them)."""
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise ConfigError("no schema on the search_path for writethrough's tables")
    return Objects(str(row[0]))


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install` did."""

    table: str  # schema.table
    capture: Capture
    key_column: str
    version_column: str
    added_version_column: bool
    publication: str | None  # logical: the publication listeners stream
    delete_versions: bool  # a DELETE's WAL record carries the old version (logical)


# -- shared objects --------------------------------------------------------------------

_SHARED = {
    SEQUENCE: ("S", "CREATE SEQUENCE {o} AS bigint INCREMENT BY 2 START WITH 2 NO CYCLE",
               "GRANT USAGE ON SEQUENCE {o} TO PUBLIC"),
    EPOCHS: ("r", epochs.PG_CREATE.replace("IF NOT EXISTS writethrough_epochs", "{o}"), None),
    # Which table feeds which namespace: listeners claim theirs at start, as stores do.
    REGISTRY: ("r", registry.PG_CREATE.replace("IF NOT EXISTS writethrough_namespaces", "{o}"),
               None),
    PARKED: ("r", "CREATE TABLE {o} (namespace text NOT NULL, key text NOT NULL, "
                  "version bigint, deleted boolean NOT NULL, attempts int NOT NULL DEFAULT 0, "
                  "parked_at timestamptz NOT NULL DEFAULT now(), "
                  "next_try timestamptz NOT NULL DEFAULT now(), error text, "
                  "PRIMARY KEY (namespace, key))", None),
    CHANGES: ("r", "CREATE TABLE {o} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                   "tbl oid NOT NULL, key text, "
                   "created_at timestamptz NOT NULL DEFAULT clock_timestamp()) "
                   # Rows are deleted as they are applied: vacuum early and often.
                   "WITH (autovacuum_vacuum_scale_factor = 0, "
                   "autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)",
              None),
}
_CHANGES_POLICIES = (
    "ALTER TABLE {o} ENABLE ROW LEVEL SECURITY",
    # A role records changes only of tables it may write (granted to PUBLIC below).
    "DROP POLICY IF EXISTS writethrough_record ON {o}",
    "CREATE POLICY writethrough_record ON {o} FOR INSERT TO PUBLIC WITH CHECK "
    "(pg_catalog.has_table_privilege(tbl, 'INSERT, UPDATE, DELETE, TRUNCATE'))",
    # Claiming (SELECT ... FOR UPDATE) and deleting still need the privileges, which
    # only the listener's role is granted.
    "DROP POLICY IF EXISTS writethrough_read ON {o}",
    "CREATE POLICY writethrough_read ON {o} FOR SELECT TO PUBLIC USING (true)",
    "DROP POLICY IF EXISTS writethrough_claim ON {o}",
    "CREATE POLICY writethrough_claim ON {o} FOR UPDATE TO PUBLIC USING (true)",
    "DROP POLICY IF EXISTS writethrough_apply ON {o}",
    "CREATE POLICY writethrough_apply ON {o} FOR DELETE TO PUBLIC USING (true)",
    "GRANT INSERT ON {o} TO PUBLIC",
)
# Trusted owners: the installing role, or a superuser (who needs no trigger to escalate).
_OWNED = """
SELECT c.relkind, pg_get_userbyid(c.relowner),
       c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
       OR (SELECT rolsuper FROM pg_roles WHERE oid = c.relowner),
       pg_has_role(c.relowner, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


# Whether a shared table is already as this version leaves it. Running its DDL again
# would take an ACCESS EXCLUSIVE lock for nothing, and deadlock with a running trigger
# listener: it holds the change rows it claimed while it reads the epochs, whereas
# install went epochs first, then changes.
_EPOCHS_CURRENT = (
    "SELECT count(*) = 4 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass "
    "AND attname IN ('system_id', 'timeline', 'reason', 'changed_at') AND NOT attisdropped"
)
_POLICIES_CURRENT = """
SELECT c.relrowsecurity
  AND pg_catalog.has_table_privilege('public', c.oid, 'INSERT')
  AND (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND p.polname IN
       ('writethrough_read', 'writethrough_claim', 'writethrough_apply')) = 3
  AND EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid
              AND p.polname = 'writethrough_record'
              AND pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) LIKE '%%has_table_privilege%%')
FROM pg_catalog.pg_class c WHERE c.oid = %s::regclass
"""


def ensure_shared(conn: Connection, objects: Objects, *, changes: bool) -> None:
    """Create the shared objects that are missing; refuse ones another role owns."""
    for name, (kind, create, grant) in _SHARED.items():
        if name == CHANGES and not changes:
            continue
        target = objects.ident(name)
        found = conn.execute(_OWNED, (objects.schema, name)).fetchone()
        if found is not None:
            relkind, owner, owned, mine = found
            if not owned:
                raise ConfigError(
                    f"{objects.schema}.{name} already exists and is owned by role {owner!r}, "
                    "neither the installing role nor a superuser: refusing to adopt it (its "
                    "owner's triggers would run as whoever writes it). Drop it, or install "
                    "as its owner.")
            if relkind != kind:
                raise ConfigError(f"{objects.schema}.{name} exists but is not a "
                                  f"{'sequence' if kind == 'S' else 'table'}")
            regclass = target.as_string(conn)
            if name == CHANGES and mine and not _holds(conn, _POLICIES_CURRENT, regclass):
                for statement in _CHANGES_POLICIES:  # the policies of this version
                    conn.execute(sql.SQL(statement).format(o=target))
            if name == EPOCHS and mine and not _holds(conn, _EPOCHS_CURRENT, regclass):
                # a table of an earlier version: its new columns
                conn.execute(sql.SQL(epochs.PG_UPGRADE.replace(
                    "TABLE writethrough_epochs", "TABLE {o}")).format(o=target))
            continue
        # A savepoint: a concurrent install may win the race to create it.
        with suppress(pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject), \
                conn.transaction():
            conn.execute(sql.SQL(create).format(o=target))
            if grant:
                conn.execute(sql.SQL(grant).format(o=target))
            if name == CHANGES:
                for statement in _CHANGES_POLICIES:
                    conn.execute(sql.SQL(statement).format(o=target))


def _holds(conn: Connection, check: str, regclass: str) -> bool:
    return conn.execute(check, (regclass,)).fetchone() == (True,)


# -- per table -------------------------------------------------------------------------

def function_names(schema: str, name: str) -> tuple[sql.Identifier, sql.Identifier]:
    """The table's version and change functions, in its schema."""
    tag = table_tag(schema, name)
    return sql.Identifier(schema, f"{tag}_version"), sql.Identifier(schema, f"{tag}_event")


_VERSION_FN = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER AS $wt$
BEGIN
  NEW.{ver} := pg_catalog.nextval({seq});
  RETURN NEW;
END $wt$
"""
# One row per changed key (an UPDATE that changes the key: the old key too); one NOTIFY
# per statement at most, folded into one per transaction by PostgreSQL.
_CHANGE_FN = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER AS $wt$
BEGIN
  IF TG_RELID OPERATOR(pg_catalog.<>) {oid}::pg_catalog.oid THEN
    RAISE EXCEPTION 'writethrough: this function records changes of table % only', {oid};
  END IF;
  IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
    INSERT INTO {changes} (tbl, key)
      SELECT TG_RELID, n.{key}::pg_catalog.text FROM new_rows n;
  ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
    INSERT INTO {changes} (tbl, key)
      SELECT TG_RELID, n.{key}::pg_catalog.text FROM new_rows n;
    INSERT INTO {changes} (tbl, key)
      SELECT TG_RELID, o.{key}::pg_catalog.text FROM old_rows o
      WHERE NOT EXISTS (SELECT FROM new_rows n WHERE n.{key}::pg_catalog.text
                        OPERATOR(pg_catalog.=) o.{key}::pg_catalog.text);
  ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
    INSERT INTO {changes} (tbl, key)
      SELECT TG_RELID, o.{key}::pg_catalog.text FROM old_rows o;
  ELSE
    INSERT INTO {changes} (tbl, key) VALUES (TG_RELID, NULL);
  END IF;
  {notify}
  RETURN NULL;
END $wt$
"""
_CHANGE_TRIGGERS = (
    "CREATE TRIGGER writethrough_insert AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "CREATE TRIGGER writethrough_update AFTER UPDATE ON {t} REFERENCING OLD TABLE AS old_rows "
    "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "CREATE TRIGGER writethrough_delete AFTER DELETE ON {t} REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "CREATE TRIGGER writethrough_truncate AFTER TRUNCATE ON {t} "
    "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
)


def install(source_url: str, table: str, key_column: str, *, capture: Capture = "logical",
            version_column: str = "version", notify: bool = False,
            listener_role: str | None = None, connect_timeout: int = 5) -> Installed:
    """Install (or switch, or refresh) change capture on ``table``, in one transaction.

        >>> install("postgresql://owner@db/app", "profiles", "id")
        Installed(table='public.profiles', capture='logical', ..., publication='wt_profiles_…')

    Needs to own the table (or be superuser), and CREATE on its schema and on the database
    (a publication). ``listener_role``: grant that role exactly what ``listen`` needs (read
    the table, the changes, the epochs and the parked keys; logical decoding also needs
    the REPLICATION attribute, which only a superuser can give) and use the namespace
    registry (``writethrough_namespaces``, created here: a listener claims its namespaces
    there when it starts, as stores do). Takes a short exclusive lock on the table.
    """
    if capture not in ("logical", "triggers"):
        raise ConfigError(f"capture must be 'logical' or 'triggers', got {capture!r}")
    table_identifier(table)  # before connecting: a bad name is a ConfigError, not a wait
    identifier(key_column, "key column")
    identifier(version_column, "version column")
    if version_column == key_column:
        raise ConfigError("the key column cannot be the version column")
    if listener_role is not None:
        identifier(listener_role, "listener role")
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors(), conn.transaction():
        shape = inspect_table(conn, table, key_column)
        super_row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                                 ).fetchone()
        if not shape.owned and not (super_row and super_row[0]):
            raise ConfigError(f"table {shape.qualified} is owned by {shape.owner!r}: install "
                              "as its owner")
        if capture == "logical":
            wal = conn.execute("SHOW wal_level").fetchone()
            if wal is None or wal[0] != "logical":
                raise ConfigError(
                    f"wal_level is {wal[0] if wal else '?'!s}, logical capture needs "
                    "wal_level=logical (managed PostgreSQL: e.g. rds.logical_replication=1); "
                    "or install with capture='triggers'")
            if key_column not in shape.identity_columns:
                raise ConfigError(
                    f"a DELETE on {shape.qualified} would not carry {key_column!r} in the WAL "
                    f"(replica identity {shape.replica_identity!r}): make {key_column!r} the "
                    "primary key, or ALTER TABLE ... REPLICA IDENTITY USING INDEX / FULL")
        objects = objects_of(conn)
        ensure_shared(conn, objects, changes=capture == "triggers")
        added = _version_column(conn, shape, version_column)
        _version_trigger(conn, shape, objects, version_column, key_column)
        _, change_fn = function_names(shape.schema, shape.name)
        for name in (*CHANGE_TRIGGERS, *OLD_TRIGGERS):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(name), shape.ident))
        publication = None
        if capture == "logical":
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(change_fn))
            publication = _publication(conn, shape)
        else:
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(shape.tag)))
            conn.execute(sql.SQL(_CHANGE_FN).format(
                fn=change_fn, oid=sql.Literal(shape.oid), changes=objects.changes,
                key=sql.Identifier(key_column),
                notify=sql.SQL("PERFORM pg_catalog.pg_notify({}, '');").format(
                    sql.Literal(CHANNEL))
                if notify else sql.SQL("")))
            conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(change_fn))
            for statement in _CHANGE_TRIGGERS:
                conn.execute(sql.SQL(statement).format(t=shape.ident, fn=change_fn))
        if listener_role is not None:
            _grant_listener(conn, shape, objects, listener_role, capture)
    return Installed(shape.qualified, capture, key_column, version_column, added, publication,
                     shape.replica_identity == "f" or version_column in shape.identity_columns)


def _version_column(conn: Connection, shape: TableShape, column: str) -> bool:
    ver = sql.Identifier(column)
    if column not in shape.columns:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint NOT NULL DEFAULT 0").format(
            shape.ident, ver))
        return True
    if shape.columns[column] != "bigint":
        raise ConfigError(f"column {column!r} of {shape.qualified} is "
                          f"{shape.columns[column]}, not bigint")
    return False


def _version_trigger(conn: Connection, shape: TableShape, objects: Objects,
                     column: str, key_column: str) -> None:
    """The BEFORE row trigger, and the sequence moved past every version already there."""
    ver = sql.Identifier(column)
    conn.execute(sql.SQL(
        "SELECT setval({s}, m) FROM (SELECT max({v}) AS m FROM {t}) AS x "
        "WHERE m > coalesce(pg_sequence_last_value({s}), 0)"
    ).format(s=objects.sequence_regclass, v=ver, t=shape.ident))
    version_fn, _ = function_names(shape.schema, shape.name)
    conn.execute(sql.SQL(_VERSION_FN).format(fn=version_fn, ver=ver,
                                             seq=objects.sequence_regclass))
    conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(version_fn))
    for trigger in (VERSION_TRIGGER, VERSION_UPDATE_TRIGGER):
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger), shape.ident))
    conn.execute(sql.SQL("CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW "
                         "EXECUTE FUNCTION {}()").format(
        sql.Identifier(VERSION_TRIGGER), shape.ident, version_fn))
    conn.execute(sql.SQL("CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW WHEN ({}) "
                         "EXECUTE FUNCTION {}()").format(
        sql.Identifier(VERSION_UPDATE_TRIGGER), shape.ident,
        version_kept(ver, sql.Identifier(key_column), objects.sequence_regclass), version_fn))


def version_kept(ver: sql.Identifier, key: sql.Identifier, sequence: sql.Composable) -> sql.Composed:
    """When the UPDATE trigger draws a version: unless the statement set one itself that
    is above the row's and not above the last version drawn (``SET version = version + 1``
    usually is), on a row that keeps its key. Those keep what the trigger's draw keeps: a
    key's versions rise in commit order (the statement's expression is evaluated on the
    locked, newest row), and no row is above the sequence, so a delete's tombstone "above
    everything drawn" (:func:`~writethrough.capture.versions.floor_sql`) and a re-insert's
    draw stay above it. A row that changes its key starts a new history for that key
    (which may have held a higher version before a DELETE): it always draws.
    Evaluated by PostgreSQL without calling the function: a bulk UPDATE that sets the
    version pays no per-row function call and no per-row ``nextval``."""
    return sql.SQL(
        "NEW.{v} IS NULL OR OLD.{v} IS NULL OR NEW.{v} OPERATOR(pg_catalog.<=) OLD.{v} "
        "OR NEW.{v} OPERATOR(pg_catalog.>) COALESCE(pg_catalog.pg_sequence_last_value({s}), 0) "
        "OR NEW.{k} IS DISTINCT FROM OLD.{k}"
    ).format(v=ver, k=key, s=sequence)


def _publication(conn: Connection, shape: TableShape) -> str:
    name = shape.tag
    found = conn.execute(
        "SELECT p.pubowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), "
        "pg_get_userbyid(p.pubowner) FROM pg_publication p WHERE p.pubname = %s", (name,)
    ).fetchone()
    if found is not None and not found[0]:
        raise ConfigError(f"publication {name} exists and is owned by {found[1]!r}")
    if found is not None:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')"
    ).format(sql.Identifier(name), shape.ident))
    return name


def _grant_listener(conn: Connection, shape: TableShape, objects: Objects, role: str,
                    capture: Capture) -> None:
    r = sql.Identifier(role)
    grants = [("SELECT", shape.ident), ("SELECT, USAGE", objects.sequence),
              ("SELECT, INSERT, UPDATE", objects.epochs),
              ("SELECT, INSERT, UPDATE", objects.ident(REGISTRY)),
              ("SELECT, INSERT, UPDATE, DELETE", objects.parked)]
    if capture == "triggers":
        grants.append(("SELECT, UPDATE, DELETE", objects.changes))  # UPDATE: FOR UPDATE
    for privileges, obj in grants:
        kind = "SEQUENCE " if obj == objects.sequence else ""
        conn.execute(sql.SQL("GRANT " + privileges + " ON " + kind + "{} TO {}").format(obj, r))


# -- uninstall -------------------------------------------------------------------------


def uninstall(source_url: str, table: str, *, connect_timeout: int = 5) -> bool:
    """Remove change capture from ``table``: its triggers, functions and publication, and
    the changes still recorded for it. True if there was anything to remove.

    Works after the table was dropped (its functions and publication are found by name).
    Needs only the ownership of what it drops (changes recorded are removed when the role
    may delete them). Keeps the version column (a later install
    continues from the same versions), the shared sequence, and replication slots
    (:func:`~writethrough.capture.logical.drop_slot`).
    """
    table_identifier(table)  # a plain name or schema.name, else ConfigError
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors(), conn.transaction():
        shape = find_table(conn, table)
        if shape is not None:
            schema, name = shape.schema, shape.name
        elif "." in table:
            schema, _, name = table.partition(".")
        else:  # dropped: where an unqualified name would have been created
            schema, name = objects_of(conn).schema, table
        removed = False
        if shape is not None:
            names = [VERSION_TRIGGER, VERSION_UPDATE_TRIGGER, *CHANGE_TRIGGERS, *OLD_TRIGGERS]
            found = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s "
                                 "AND tgname = ANY(%s)", (shape.oid, names)).fetchone()
            removed = bool(found and found[0])
            for trigger in names:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger), shape.ident))
        tag = table_tag(schema, name)
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (tag,)).fetchone():
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(tag)))
            removed = True
        for fn in function_names(schema, name):
            exists = conn.execute("SELECT to_regproc(%s)", (fn.as_string(conn),)).fetchone()
            if exists and exists[0] is not None:
                conn.execute(sql.SQL("DROP FUNCTION {}()").format(fn))
                removed = True
        objects = objects_of(conn)
        changes = objects.changes.as_string(conn)
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(%s, "
                        "'DELETE')", (changes, changes)).fetchone() == (True,):
            # Changes of this table, and of tables that no longer exist.
            deleted = conn.execute(sql.SQL(
                "DELETE FROM {} c WHERE c.tbl = %s OR NOT EXISTS "
                "(SELECT FROM pg_class WHERE oid = c.tbl)").format(objects.changes),
                (shape.oid if shape else 0,))
            removed = removed or deleted.rowcount > 0
    return removed
