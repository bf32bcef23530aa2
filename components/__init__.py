"""Thin KFP components, one module per DAG step.

Each imports only the standard library and kfp at module level (so compiling needs only kfp);
its body parses the config, calls the step function from `scenesearch`, and logs to MLflow.
"""
