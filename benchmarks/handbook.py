"""The Fraud Detection Handbook's way of computing its features, kept as a reference.

Per-entity pandas groupby-apply with time-based rolling windows, as the handbook's notebooks do.
The benchmark times it against pipelines.features, and a test checks both agree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def handbook_features(transactions: pd.DataFrame, delay: int = 7) -> pd.DataFrame:
    """The handbook's reference implementation: groupby-apply with time-based rolling windows.

    Sorted stably (the notebooks' default sort is not), so transactions of one card or terminal
    within the same second keep their input order, as in pipelines.features.
    """

    def customer(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values("tx_datetime", kind="mergesort")
        amounts = frame.set_index("tx_datetime")["tx_amount"]
        out = pd.DataFrame(index=frame.index)
        for w in (1, 7, 30):
            total = amounts.rolling(f"{w}d").sum().to_numpy()
            count = amounts.rolling(f"{w}d").count().to_numpy()
            out[f"customer_nb_tx_{w}d"] = count
            out[f"customer_avg_amount_{w}d"] = total / count
        return out

    def terminal(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values("tx_datetime", kind="mergesort")
        labels = frame.set_index("tx_datetime")["tx_fraud"].astype(float)
        fraud_delay = labels.rolling(f"{delay}d").sum().to_numpy()
        count_delay = labels.rolling(f"{delay}d").count().to_numpy()
        out = pd.DataFrame(index=frame.index)
        for w in (1, 7, 30):
            fraud = labels.rolling(f"{delay + w}d").sum().to_numpy() - fraud_delay
            count = labels.rolling(f"{delay + w}d").count().to_numpy() - count_delay
            out[f"terminal_nb_tx_{w}d"] = count
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"terminal_risk_{w}d"] = np.nan_to_num(fraud / count)
        return out

    cust = transactions.groupby("customer_id", group_keys=False)[
        ["tx_datetime", "tx_amount"]
    ].apply(customer)
    term = transactions.groupby("terminal_id", group_keys=False)[["tx_datetime", "tx_fraud"]].apply(
        terminal
    )
    return pd.concat([cust, term], axis=1).loc[transactions.index]
