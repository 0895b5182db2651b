"""Traces as SQL tables: `fusetrace sql` (an embedded DuckDB) and `export --parquet`.

`schema` declares every table and column once; `layout` finds each message column in the
dissectors' structs; `build` streams one trace into Arrow record batches; `analysis` adds
the lifecycle pass's tables from a worker process; `sources` runs both for each trace
given; `store` writes the batches as Parquet and keeps each trace's files for `sql`;
`command` is the `sql` command line.
"""
