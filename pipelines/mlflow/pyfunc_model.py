"""The MLflow pyfunc of a fraudflow model (models-from-code): probabilities, not labels.

MLflow copies this file into every logged model and runs it when someone loads the model with
`mlflow.pyfunc.load_model` or serves it with `mlflow models serve`. It imports nothing of
fraudflow, so the model loads wherever its pinned requirements are installed (another
environment, Spark executors) and no pickled object is ever logged. fraudflow itself never runs
it: the API and the jobs read the booster and the metadata as data (`pipelines.model`).
"""

import json

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd


class FraudModel(mlflow.pyfunc.PythonModel):
    """Fraud probabilities for rows holding at least the model's feature columns."""

    def load_context(self, context):
        with open(context.artifacts["meta"]) as handle:
            meta = json.load(handle)
        self.features = list(meta["features"])
        self.threshold = float(meta["threshold"])
        self.booster = lgb.Booster(model_file=context.artifacts["booster"])

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise ValueError(f"missing feature columns: {missing}")
        matrix = frame.loc[:, self.features].to_numpy(dtype=np.float64)
        return self.booster.predict(matrix, num_threads=1)


mlflow.models.set_model(FraudModel())
