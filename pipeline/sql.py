"""`talkcurate inspect DIR --sql QUERY [--table NAME=FILE ...]`: full SQL (DuckDB) over a run's
manifest, as the table `manifest`, joined with the user's own tables.

The query never touches a file: DuckDB runs in memory with file system access, extensions and
Python's variable lookup turned off and its configuration locked, so `COPY ... TO`, `ATTACH`,
`read_csv('/etc/passwd')` or `INSTALL` fail. The user's tables are read here (parquet, CSV, JSON
lines) and handed over as Arrow tables.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from pipeline.query import QueryError

MANIFEST_TABLE = "manifest"
_READERS = {
    ".parquet": pq.read_table,
    ".csv": pyarrow.csv.read_csv,
    ".json": pyarrow.json.read_json,
    ".jsonl": pyarrow.json.read_json,
}
_LOCKED = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
    "lock_configuration": True,
}


def read_tables(specs: list[str]) -> dict[str, pa.Table]:
    """`NAME=FILE` arguments as Arrow tables, by the file's suffix."""
    tables = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.isidentifier():
            raise QueryError(f"--table takes NAME=FILE with NAME a plain identifier, got {spec!r}")
        if name == MANIFEST_TABLE or name in tables:
            raise QueryError(f"--table {name}: the name is taken")
        reader = _READERS.get(os.path.splitext(path)[1].lower())
        if reader is None:
            raise QueryError(f"--table {name}: {path} is not {', '.join(_READERS)}")
        try:
            tables[name] = reader(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise QueryError(f"--table {name}: cannot read {path}: {exc}") from None
    return tables


def run_sql(manifest: pa.Table, query: str, tables: dict[str, pa.Table] | None = None) -> pa.Table:
    """The result of `query` over `manifest` and `tables`, each registered under its name."""
    if not query.strip():
        raise QueryError("--sql: the query is empty")
    connection = duckdb.connect(":memory:", config=_LOCKED)
    try:
        connection.register(MANIFEST_TABLE, manifest)
        for name, table in (tables or {}).items():
            connection.register(name, table)
        try:
            return connection.sql(query).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"--sql: {exc}") from None
    finally:
        connection.close()
