"""A service account on an MLflow tracking server run with the `basic-auth` app.

`python -m fraudflow.registry_account --username fraudflow-api` creates the account, or sets its
password when it exists (re-running it rotates the password). It acts as the admin given by
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on MLFLOW_TRACKING_URI; the account's password
comes from FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD, never from the command line (which `ps` shows).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.mlflow.accounts import AccountError, ensure_account

PASSWORD_ENV = "FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD"


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
