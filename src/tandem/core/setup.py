"""Process set-up and secrets, for every entry point (the command line, DVC stages, Kubeflow steps).

Logging goes to stderr with the chatty libraries at WARNING; environment defaults keep Great
Expectations from phoning home and tokenizers from forking threads. Secrets (the Milvus token)
come from the environment only, never from a recipe, and leave a config before it is shared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace

from tandem.core.config import RunConfig

NOISY = ("great_expectations", "urllib3", "httpx", "matplotlib", "PIL", "pymilvus", "milvus_lite", "filelock")
NOISY += ("faiss", "feast", "dask", "kfp")
ENV_DEFAULTS = {"GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}
MILVUS_TOKEN_ENV = "TANDEM_MILVUS_TOKEN"


def setup_process(level: int = logging.INFO, offline_hub: bool = False) -> None:
    """Log lines to stderr (stdout stays for results, e.g. `tandem run --json`) and the environment defaults.

    `offline_hub`: HF_HUB_OFFLINE=1 unless set (images and pipeline steps read models from paths); the
    command line leaves it alone so that Hub ids download where the machine can reach the Hub."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Milvus Lite's in-process gRPC server logs a traceback for AllocTimestamp, which it does not
    # implement and pymilvus tolerates; a Milvus server's errors reach us as client exceptions.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    set_env_defaults(offline_hub)


def set_env_defaults(offline_hub: bool = False) -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if offline_hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def with_secrets(cfg: RunConfig, env: Mapping[str, str] | None = None) -> RunConfig:
    """`cfg` with the Milvus token of the environment (TANDEM_MILVUS_TOKEN), when one is set."""
    token = (os.environ if env is None else env).get(MILVUS_TOKEN_ENV)
    return replace(cfg, index=replace(cfg.index, token=token)) if token else cfg


def without_secrets(cfg: RunConfig) -> RunConfig:
    """`cfg` without the Milvus token: for reports, XComs and pipeline arguments."""
    return replace(cfg, index=replace(cfg.index, token=""))
