"""The PostgreSQL catalog's tables: the SQLite catalog's schema (pitstore.catalog.sqlite) in PostgreSQL types.

Statements run with ``search_path`` set to the store's schema, so they name tables without it. Text that is
sorted (symbols, names, table ids) is ``COLLATE "C"``: byte order, as SQLite and Python's ``sorted`` give.
"""

from __future__ import annotations

__all__ = ["COMPONENT", "MIGRATIONS", "SCHEMA_VERSION", "TABLES"]

COMPONENT = "catalog"  # its rows of schema_version (the history tier's are 'history': one server may hold both)
SCHEMA_VERSION = 3

_V1 = (
    """CREATE TABLE feature_set_versions (
        name        text COLLATE "C" NOT NULL,
        version     integer NOT NULL,
        fingerprint text NOT NULL,
        definition  text NOT NULL,
        created_at  text NOT NULL,
        PRIMARY KEY (name, version),
        UNIQUE (name, fingerprint)
    )""",
    # Times are bigint microseconds since the epoch, UTC; visible at T: recorded_at <= T < superseded_at.
    """CREATE TABLE bar_entries (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        symbol        text COLLATE "C" NOT NULL,
        path          text NOT NULL,
        n_rows        bigint NOT NULL,
        first_ts      bigint NOT NULL,
        last_ts       bigint NOT NULL,
        content_hash  text NOT NULL,
        appended_only boolean NOT NULL,
        restated_rows bigint NOT NULL,
        recorded_at   bigint NOT NULL,
        superseded_at bigint
    )""",
    "CREATE INDEX bar_entries_live ON bar_entries (symbol, superseded_at)",
    # The invariant the commit's locks keep, checked by the server too: one live snapshot per symbol.
    "CREATE UNIQUE INDEX bar_entries_one_live ON bar_entries (symbol) WHERE superseded_at IS NULL",
    """CREATE TABLE feature_entries (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        feature_set   text COLLATE "C" NOT NULL,
        version       integer NOT NULL,
        symbol        text COLLATE "C" NOT NULL,
        path          text NOT NULL,
        n_rows        bigint NOT NULL,
        first_ts      bigint NOT NULL,
        last_ts       bigint NOT NULL,
        bars_entry_id bigint NOT NULL,
        recorded_at   bigint NOT NULL,
        superseded_at bigint,
        size          bigint,
        file_hash     text
    )""",
    "CREATE INDEX feature_entries_live ON feature_entries (feature_set, version, symbol, superseded_at)",
    """CREATE TABLE cache_entries (
        key             text PRIMARY KEY,
        symbol          text COLLATE "C" NOT NULL,
        path            text NOT NULL,
        size            bigint NOT NULL,
        file_hash       text NOT NULL,
        kind            text NOT NULL,
        n_rows          bigint NOT NULL,
        first_ts        bigint,
        last_ts         bigint,
        compute_seconds double precision NOT NULL,
        created_at      bigint NOT NULL,
        last_access     bigint NOT NULL,
        hits            bigint NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX cache_entries_symbol ON cache_entries (symbol)",
    "CREATE INDEX cache_entries_access ON cache_entries (last_access)",
    """CREATE TABLE cache_stats (
        symbol          text COLLATE "C" PRIMARY KEY,
        hits            bigint NOT NULL DEFAULT 0,
        misses          bigint NOT NULL DEFAULT 0,
        compute_seconds double precision NOT NULL DEFAULT 0,
        saved_seconds   double precision NOT NULL DEFAULT 0,
        hash_seconds    double precision NOT NULL DEFAULT 0,
        hash_bytes      bigint NOT NULL DEFAULT 0,
        corruptions     bigint NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE history_archives (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        table_id    text COLLATE "C" NOT NULL,
        path        text NOT NULL,
        n_rows      bigint NOT NULL,
        first_ts    bigint NOT NULL,
        last_ts     bigint NOT NULL,
        cutoff      bigint NOT NULL,
        size        bigint NOT NULL,
        file_hash   text NOT NULL,
        recorded_at bigint NOT NULL
    )""",
    "CREATE INDEX history_archives_table ON history_archives (table_id, first_ts)",
    """CREATE TABLE history_synced (
        table_id text NOT NULL,
        entry_id bigint NOT NULL,
        from_ts  bigint NOT NULL,
        PRIMARY KEY (table_id, entry_id)
    )""",
    """CREATE TABLE online_requests (
        symbol   text COLLATE "C" PRIMARY KEY,
        requests bigint NOT NULL
    )""",
    """CREATE TABLE retired_versions (
        name       text COLLATE "C" NOT NULL,
        version    integer NOT NULL,
        retired_at bigint NOT NULL,
        PRIMARY KEY (name, version)
    )""",
    "CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL)",
)

# (version, statements): each applied once, in one transaction with its schema_version row.
# 2: bar snapshots as a base plus appended segments (pitstore.sources.segments); NULL: one file, as before.
_V2 = ("ALTER TABLE bar_entries ADD COLUMN parts text",)

# 3: the commit clock (pitstore.rules.commit_time): one row, the time of the last commit; a commit updates it,
# so its row lock orders the commits and no two share a time.
_V3 = ("CREATE TABLE commit_clock (id integer PRIMARY KEY CHECK (id = 0), t bigint NOT NULL)",)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1), (2, _V2), (3, _V3))

TABLES = ("feature_set_versions", "bar_entries", "feature_entries", "cache_entries", "cache_stats",
          "history_archives", "history_synced", "online_requests", "retired_versions", "store_meta", "commit_clock")
