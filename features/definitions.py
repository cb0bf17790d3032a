"""Feast definitions of tandem: entities `item` and `user`, feature views `item_features` and
`user_features`. Thin on purpose: the builder lives in the library (`tandem.data.features.definitions`),
which the pipeline's features stage applies too. Like feature_store.yaml (through the `feast` link in
this folder), it points at the store of the default workdir `work/`; for another workdir use
`tandem.data.features.store(workdir)` in Python."""

from pathlib import Path

from tandem.data.features import definitions

here = Path(__file__).parent  # sources at feast/<view>, relative to the repo folder like the library's to the workdir
item, user, item_features, user_features = definitions(here / "feast", relative_to=here)
