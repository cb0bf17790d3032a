"""Offline evaluation: ranking metrics, the evaluation protocols, baselines and the release gate."""
