"""Service accounts on an MLflow tracking server run with the `basic-auth` app.

`ensure_account` creates the account, or sets its password when it exists (calling it again
rotates the password). It acts as the admin given by MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD.

The account is not an admin: with the server's `default_permission = READ` it can read every
experiment and model version (what the API needs to load the Production model) and can neither
register a version nor move one between stages.
"""

from __future__ import annotations

import os

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


class AccountError(RuntimeError):
    """The account could not be created or updated; the message holds no password."""


def _scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def ensure_account(tracking_uri: str, username: str, password: str) -> str:
    """Create `username` with `password`, or set its password if it exists.

    Returns "created" or "updated". Refuses to touch the admin account the call runs as.
    """
    if not username or not password:
        raise AccountError("an account needs a non-empty username and password")
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not admin or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        raise AccountError(
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must name the registry's admin"
        )
    if username == admin:
        raise AccountError(f"{username!r} is the admin account this runs as, not a service one")
    client = AuthServiceClient(tracking_uri)
    try:
        try:
            user = client.get_user(username)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_user(username, password)
            return "created"
        if user.is_admin:
            raise AccountError(
                f"{username!r} is an admin account: refusing to use it for a service"
            )
        client.update_user_password(username, password)
        return "updated"
    except MlflowException as exc:
        detail = _scrub(str(exc.message), password, os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        raise AccountError(f"registry account {username!r}: {detail}") from None
