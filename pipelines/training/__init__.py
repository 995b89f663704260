"""Training: the simulator, one training run, the prequential backtest, retraining and the
evaluation plots. Everything it records goes through the MLflow edge (`pipelines.mlflow`)."""
