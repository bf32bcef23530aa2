"""The DAG wiring (scenesearch_pipeline), its local runner (local) and compilation."""
