"""Datasets: the on-disk layout and its ingest step (ingest.py), the embedded benchmark (generate.py,
synthetic_scenes.py)."""
