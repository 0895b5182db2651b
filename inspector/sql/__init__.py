"""Traces as SQL tables: `fusetrace sql` (an embedded DuckDB) and `export --parquet`.

`schema` declares every table and column once; `layout` finds each message column in the
dissectors' structs; `build` streams one trace into Arrow record batches; `analysis` adds
the lifecycle pass's tables; `command` is the `sql` command line.
"""
