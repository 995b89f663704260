"""The MLflow edge: the only package that imports `mlflow`. Stores and clients (`store`),
runs (`runs`), logged models (`models`), the registry (`registry`), the promotion policy
(`promotion`), the pyfunc logged with every model, artifact copies for backups (`artifacts`)
and the tracking server's accounts (`accounts`). Importing this package imports nothing."""
