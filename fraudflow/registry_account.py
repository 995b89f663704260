"""A service account on an MLflow tracking server run with the `basic-auth` app.

`python -m fraudflow.registry_account --username fraudflow-api` creates the account, or sets its
password when it exists (re-running it rotates the password). It acts as the admin given by
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on MLFLOW_TRACKING_URI; the account's password
comes from FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD, never from the command line (which `ps` shows).

The account is not an admin: with the server's `default_permission = READ` it can read every
experiment and model version (what the API needs to load the Production model) and can neither
register a version nor move one between stages.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

PASSWORD_ENV = "FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fraudflow.registry_account", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--username", required=True, help="the service account's name")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="the tracking server (default: MLFLOW_TRACKING_URI)",
    )
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("no tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        parser.error(f"set {PASSWORD_ENV} to the account's password")
    try:
        outcome = ensure_account(args.tracking_uri, args.username, password)
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"registry account {args.username!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
