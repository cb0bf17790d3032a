"""Feast definitions of tandem: entities `item`, `user` and `run`, feature views `item_features` and
`user_features` (online) and their offline-only `*_by_run` views (keyed per run). Thin on purpose:
the builder lives in the library (`tandem.data.features.definitions`), which the pipeline's features
stage applies too. Like feature_store.yaml (through the `feast` link in
this folder), it points at the store of the default workdir `work/`; for another workdir use
`tandem.data.features.store(workdir)` in Python."""

from pathlib import Path

from tandem.data.features import definitions

here = Path(__file__).parent  # sources at feast/<view>, relative to the repo folder like the library's to the workdir
item, user, run, item_features, user_features, *by_run = definitions(here / "feast", relative_to=here)
item_features_by_run, user_features_by_run = by_run  # offline only: each run's own snapshot
