"""Backup and restore of everything a deployment holds: the MLflow backend store and artifacts,
the online state, the prediction log and the monitoring reports (`run.py` ties them together;
one module per kind of store)."""
