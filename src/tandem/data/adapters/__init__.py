"""Converters from public datasets to the tandem data contract."""
