"""Who may call what: bearer tokens with scopes, and the start-up rule that an API other hosts
can reach never runs without them.

Every secret is kept as its SHA-256 digest (a token given in clear is hashed when loaded) and a
presented token is compared, in constant time, with every one of them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from pipelines.settings import ApiToken, Credential, ServingSettings

SCORE, LABEL = "score", "label"
# the scope each protected endpoint needs; every other route is open
ROUTE_SCOPES = {"api.predict": SCORE, "api.invocations": SCORE, "api.feedback": LABEL}
# prometheus-flask-exporter names its view after its function
METRICS_ENDPOINT = "prometheus_metrics"
ANONYMOUS = "anonymous"
# gunicorn's master puts the addresses it binds here for its workers' create_app
LISTEN_ENV = "FRAUDFLOW_LISTEN"


class AuthConfigError(RuntimeError):
    """Tokens that cannot be read, or an exposed API without them (gunicorn prints the message
    of a RuntimeError raised at start and exits with 1)."""


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Credentials:
    """The API's token digests with their callers, and the digest /metrics requires."""

    tokens: tuple[tuple[bytes, Caller], ...] = ()
    metrics: bytes | None = None

    @property
    def anonymous(self) -> bool:
        """No token configured: every caller is let in (see require_tokens_when_exposed)."""
        return not self.tokens

    def identify(self, presented: str) -> Caller | None:
        """The caller whose token this is, comparing with every digest in constant time."""
        digest = _digest(presented)
        found = None
        for expected, caller in self.tokens:
            if hmac.compare_digest(digest, expected):
                found = caller
        return found

    def metrics_allowed(self, presented: str | None) -> bool:
        """Whether /metrics answers: always without a metrics token, which only a loopback
        bind or serving.allow_anonymous permits (require_tokens_when_exposed)."""
        if self.metrics is None:
            return True
        return presented is not None and hmac.compare_digest(_digest(presented), self.metrics)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _credential_digest(credential: Credential, where: str) -> bytes:
    if credential.sha256 is not None:
        return bytes.fromhex(credential.sha256)
    if credential.token is not None:
        return _digest(credential.token.get_secret_value())
    path = Path(str(credential.file))
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthConfigError(f"{where}: cannot read the token file {path}: {exc.strerror}")
    if len(token) < 16:
        raise AuthConfigError(f"{where}: the token in {path} is shorter than 16 characters")
    return _digest(token)


def _tokens_from_file(path: Path) -> list[ApiToken]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthConfigError(f"serving.tokens_file: cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        raise AuthConfigError(
            f"serving.tokens_file: {path} is not valid YAML ({type(exc).__name__})"
        )
    try:
        return TypeAdapter(list[ApiToken]).validate_python(content or [])
    except ValidationError as exc:
        # the messages and field paths only: pydantic's input values would show the secrets
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'list'}: {err['msg']}"
            for err in exc.errors()
        )
        raise AuthConfigError(
            f"serving.tokens_file: {path} must hold a list of "
            f"{{name, scopes, token | sha256}}: {problems}"
        ) from None


def load_credentials(serving: ServingSettings) -> Credentials:
    """The configured tokens (serving.tokens, then serving.tokens_file) and metrics secret.

    A name given twice, or one secret under two names, is refused: either would make the
    access log or the scopes ambiguous."""
    entries = list(serving.tokens)
    if serving.tokens_file:
        entries += _tokens_from_file(Path(serving.tokens_file))
    tokens: list[tuple[bytes, Caller]] = []
    for entry in entries:
        digest = _credential_digest(entry, f"token {entry.name!r}")
        for known, caller in tokens:
            if caller.name == entry.name:
                raise AuthConfigError(f"two API tokens are named {entry.name!r}")
            if hmac.compare_digest(known, digest):
                raise AuthConfigError(f"tokens {caller.name!r} and {entry.name!r} are one secret")
        tokens.append((digest, Caller(entry.name, frozenset(entry.scopes))))
    metrics = None
    if serving.metrics_token is not None:
        metrics = _credential_digest(serving.metrics_token, "serving.metrics_token")
    return Credentials(tuple(tokens), metrics)


def _host(address: str) -> str | None:
    """The host of a gunicorn bind address (`HOST:PORT`, `[V6]:PORT`, `HOST`); None for a unix
    socket, which only local processes can open."""
    if address.startswith("unix:"):
        return None
    if address.startswith("["):
        return address[1 : address.find("]")]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


def is_loopback(address: str) -> bool:
    """Whether only this host can reach the address. A host name other than `localhost`, an
    empty host, a file descriptor: not loopback (we cannot know, so we assume the worst)."""
    if address.startswith(("fd://", "tcp://")):
        return False
    host = _host(address)
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_tokens_when_exposed(
    credentials: Credentials, addresses: Iterable[str], allow_anonymous: bool
) -> None:
    """Refuse to serve anyone who asks on an address other hosts can reach, unless the
    configuration says so explicitly: without API tokens, or without the metrics token (what
    /metrics tells, the model's version, traffic, decisions and the monitor's verdict, is
    not for anyone either). On loopback, or with serving.allow_anonymous, both stay open."""
    if allow_anonymous:
        return
    exposed = [a for a in addresses if not is_loopback(a)]
    if not exposed:
        return
    where = f"on {', '.join(exposed)}, an address other hosts can reach"
    if credentials.anonymous:
        raise AuthConfigError(
            f"refusing to serve the API without tokens {where}: configure serving.tokens or "
            "serving.tokens_file (README, Security), bind to 127.0.0.1, or set "
            "serving.allow_anonymous: true to let anyone score and post labels"
        )
    if credentials.metrics is None:
        raise AuthConfigError(
            f"refusing to serve /metrics without serving.metrics_token {where}: configure "
            "serving.metrics_token (README, Security), bind to 127.0.0.1, or set "
            "serving.allow_anonymous: true to let anyone read the metrics"
        )


def listen_addresses(serving: ServingSettings, environ: Mapping[str, str]) -> Sequence[str]:
    """Where the server listens: what gunicorn's master bound (LISTEN_ENV), else the host of
    the settings (another WSGI server is expected to bind there)."""
    given = [a for a in environ.get(LISTEN_ENV, "").split(",") if a]
    host = f"[{serving.host}]" if ":" in serving.host else serving.host
    return given or [f"{host}:{serving.port}"]
