"""Training pairs from behaviour logs: co-occurrence mining (DuckDB or Spark), the reference
and incremental miners, the time split."""
