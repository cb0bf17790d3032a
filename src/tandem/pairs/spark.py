"""Co-occurrence mining on Spark (PySpark DataFrame API), the semantics of `tandem.pairs`.

Install with the `spark` extra (`pip install 'tandem[spark]'`, needs Java 17+). The session is
created lazily on first use: local mode (`PairsConfig.spark_master`, default local[2]) bound
to 127.0.0.1 with the UI off, or a cluster's master URL. Logs are normalised Parquet (a
DataFrame is written to a temporary Parquet file first). Scores use the same integer
fixed-point sum as DuckDB (see `tandem.pairs`), so both engines return identical pairs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.pairs.core import SCALE, finalize, gap_us, parquet_files, window_us

_SESSION = None


def spark_session(cfg: PairsConfig = PairsConfig()):
    """The process's SparkSession, created on first use."""
    global _SESSION
    from pyspark.sql import SparkSession

    if _SESSION is not None and _SESSION._jsc is not None and not _SESSION._jsc.sc().isStopped():
        return _SESSION
    if cfg.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(cfg.spark_master)
        .appName("tandem-pairs")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(cfg.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(cfg.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")  # pandas writes ns timestamps
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if cfg.spark_master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    _SESSION = builder.getOrCreate()
    _SESSION.sparkContext.setLogLevel("ERROR")
    return _SESSION


def _user_pairs(ev, viewed, clicked, cfg: PairsConfig):
    """Distinct (user_id, a, b) facts of the config."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if cfg.mode == "basket":
        c1 = clicked.select("user_id", F.col("item_id").alias("a"), "t")
        c2 = clicked.select("user_id", F.col("item_id").alias("b"), "t")
        return c1.join(c2, ["user_id", "t"]).where(F.col("a") != F.col("b")).select("user_id", "a", "b").distinct()

    by_user = Window.partitionBy("user_id").orderBy("t")
    if cfg.follow == "window":
        v, c = viewed, clicked
        cond = (F.col("tc") > F.col("tv")) & (F.col("tc") <= F.col("tv") + F.lit(window_us(cfg)))
    elif cfg.follow == "session":
        times = ev.select("user_id", "t").distinct()
        new = F.when(F.col("t") - F.lag("t").over(by_user) <= F.lit(gap_us(cfg)), 0).otherwise(1)
        sess = times.withColumn("new", new).withColumn(
            "sid", F.sum("new").over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        )
        sess = sess.select("user_id", "t", "sid")
        v, c = viewed.join(sess, ["user_id", "t"]), clicked.join(sess, ["user_id", "t"])
        cond = (F.col("tc") > F.col("tv")) & (F.col("v_sid") == F.col("c_sid"))
    else:  # next_k: lt = the user's events strictly before t, le = at or before t
        frame = by_user.rangeBetween(Window.unboundedPreceding, Window.currentRow)
        pos = ev.select(
            "user_id", "t", (F.rank().over(by_user) - 1).alias("lt"), F.count(F.lit(1)).over(frame).alias("le")
        ).distinct()
        v, c = viewed.join(pos, ["user_id", "t"]), clicked.join(pos, ["user_id", "t"])
        cond = (F.col("tc") > F.col("tv")) & (F.col("c_lt") < F.col("v_le") + F.lit(cfg.next_k))
    v = v.select(
        "user_id",
        F.col("item_id").alias("a"),
        F.col("t").alias("tv"),
        *[F.col(x).alias(f"v_{x}") for x in v.columns if x not in ("user_id", "item_id", "t")],
    )
    c = c.select(
        "user_id",
        F.col("item_id").alias("b"),
        F.col("t").alias("tc"),
        *[F.col(x).alias(f"c_{x}") for x in c.columns if x not in ("user_id", "item_id", "t")],
    )
    return v.join(c, "user_id").where(cond & (F.col("a") != F.col("b"))).select("user_id", "a", "b").distinct()


def mine_spark_frame(df, cfg: PairsConfig, contract: ContractConfig):
    """The pairs as a Spark DataFrame (item_id, related_item_id, score, support), unordered."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ts_type = dict(df.dtypes)["ts"]
    t = F.expr("ts div 1000") if ts_type == "bigint" else F.unix_micros(F.col("ts").cast("timestamp"))
    known = sorted({*contract.view_events, *contract.click_events})
    ev = df.where(F.col("event").isin(known)).select("user_id", "item_id", "event", t.alias("t")).distinct()
    viewed = ev.where(F.col("event").isin(list(contract.view_events))).select("user_id", "item_id", "t").distinct()
    clicked = ev.where(F.col("event").isin(list(contract.click_events))).select("user_id", "item_id", "t").distinct()
    n_u = clicked.groupBy("user_id").agg(F.countDistinct("item_id").alias("n"))

    user_pairs = _user_pairs(ev, viewed, clicked, cfg)
    share = F.expr(f"({SCALE} + n div 2) div n")  # round(1e12 / N_u), in integers
    scored = (
        user_pairs.join(n_u, "user_id")
        .groupBy("a", "b")
        .agg(F.count(F.lit(1)).alias("support"), F.sum(share).alias("units"))
        .where(F.col("support") >= cfg.min_support)
        .select(
            F.col("a").alias("item_id"),
            F.col("b").alias("related_item_id"),
            (F.col("units").cast("double") / F.lit(float(SCALE))).alias("score"),
            F.col("support").cast("long").alias("support"),
        )
        .where((F.col("score") >= cfg.low) & (F.col("score") <= cfg.up))
    )
    rank = F.row_number().over(Window.partitionBy("item_id").orderBy(F.col("score").desc(), F.col("related_item_id")))
    return scored.withColumn("rank", rank).where(F.col("rank") <= cfg.top_t).drop("rank")


def mine_pairs_spark(
    logs,
    cfg: PairsConfig = PairsConfig(),
    contract: ContractConfig = ContractConfig(),
    out: str | Path | None = None,
    spark=None,
) -> pd.DataFrame:
    """`tandem.pairs.mine.mine_pairs` on Spark; the (top-t, hence small) result comes back to the driver
    and is written to `out` as one Parquet file."""
    spark = spark or spark_session(cfg)
    with tempfile.TemporaryDirectory(prefix="tandem-spark-") as tmp:
        if isinstance(logs, pd.DataFrame):
            files = [str(Path(tmp) / "logs.parquet")]
            logs[["user_id", "item_id", "event", "ts"]].to_parquet(
                files[0], index=False, coerce_timestamps="us", allow_truncated_timestamps=True
            )
        else:
            files = parquet_files(logs)
        result = mine_spark_frame(spark.read.parquet(*files), cfg, contract).toPandas()
    pairs = finalize(result.sort_values(["item_id", "score", "related_item_id"], ascending=[True, False, True]))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pairs.to_parquet(out, index=False)
    return pairs
