"""The co-occurrence engines' names, apart from `tandem.pairs` so that the command line can list them
in --help without importing pandas and DuckDB."""

ENGINES = ("duckdb", "spark")
