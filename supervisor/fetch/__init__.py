"""Fetch: the plan's files -> verified files on the volume (resolve, transfer, store, progress)."""
