"""The data layer: the input contract, partitions, validation, features, synthetic data,
adapters, the served-event schema and reader."""
