"""A real Milvus standalone server for the test session (pytest plugin, loaded by conftest.py).

`milvus_server` starts the server binary of the PyPI package `milvus` (tandem.release.milvus_server)
once per session on a free port in a temp folder and yields its URI; tests that ask for it skip,
saying why, when the package is missing or the server does not answer in time. `empty_server`
gives a test that server with no collections and no aliases (tests share it, and aliases such as
`live` are global to a Milvus database).
"""

from __future__ import annotations

import os

import pytest

START_TIMEOUT_S = float(os.environ.get("TANDEM_TEST_MILVUS_START_S", "120"))


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The URI of a Milvus 2.3 standalone server running for this test session."""
    from tandem.release import milvus_server as server

    reason = server.missing_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("milvus_server")
    try:
        info = server.start(base, port=server.free_port(), timeout=START_TIMEOUT_S, detach=False)
    except RuntimeError as e:
        pytest.skip(f"the Milvus server did not start: {e}")
    try:
        yield info.uri
    finally:
        server.stop(base, timeout=2)  # its data is thrown away: no need to wait for a clean shutdown


def wipe(uri: str) -> None:
    """Drop every alias, then every collection, of the server at `uri`."""
    from tandem.core.config_release import IndexConfig
    from tandem.release.index import ItemIndex

    with ItemIndex(IndexConfig(milvus_uri=uri)) as idx:
        for alias in idx.aliases():
            idx.drop_alias(alias)
        for name in idx.client.list_collections():
            idx.client.drop_collection(name)


@pytest.fixture
def empty_server(milvus_server):
    wipe(milvus_server)
    return milvus_server
