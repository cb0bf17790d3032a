"""Release: the Milvus item index and its aliases, the A/B rollout, the index audit."""
