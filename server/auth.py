"""Who may call: bearer tokens, each with roles, checked on every RPC (issue 13).

Tokens come from a file (``LLAMAGATE_AUTH_TOKENS_FILE``) and/or the
environment (``LLAMAGATE_AUTH_TOKENS``); with none, authentication is off and
every caller may do everything, as before. A caller sends
``authorization: Bearer TOKEN`` metadata. Without a token that matches:
UNAUTHENTICATED, one message whether the token was missing, malformed or
wrong. With a token whose roles lack the method's: PERMISSION_DENIED naming
the role and the method. Health and reflection answer anyone unless
``LLAMAGATE_AUTH_EXEMPT`` says otherwise.

Only each token's SHA-256 is kept. A presented token is hashed and compared
with ``hmac.compare_digest`` against every configured digest, all the same
length, so the time taken says neither which token matched nor how long
the configured ones are. A token never reaches a log line or an error
message: callers are named by the token's name (``client_name()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from hmac import compare_digest
from pathlib import Path
from typing import Any

import grpc

from llamagate.domain.errors import PermissionDenied, Unauthenticated
from llamagate.server.errors import status_for, trailing_details
from llamagate.server.interception import Behaviour, rebuilt
from llamagate.v1 import llamagate_pb2 as pb

log = logging.getLogger(__name__)

ADMIN, INFERENCE = "admin", "inference"
GRANTS: Mapping[str, frozenset[str]] = {ADMIN: frozenset({ADMIN, INFERENCE}), INFERENCE: frozenset({INFERENCE})}

SERVICE = pb.DESCRIPTOR.services_by_name["LlamaGateService"].full_name
# Every LlamaGate RPC's role (tests/test_auth.py checks the proto has no other); one missing here needs admin.
METHOD_ROLES: Mapping[str, str] = {
    **{f"/{SERVICE}/{m}": ADMIN for m in ("LoadModel", "UnloadModel", "PlanModel")},
    **{f"/{SERVICE}/{m}": INFERENCE for m in ("Generate", "Synthesize", "CountTokens", "Embed", "Rerank",
                                                 "GetStatus", "ListModels")},
}
DEFAULT_EXEMPT = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                            "grpc.reflection.v1alpha.ServerReflection"})

MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a metadata value carries unchanged
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # safe in a log line and as a metrics label
_EXEMPT = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_]\w*)?")  # a service, or service/Method
_HOW_TO_MAKE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one"

_CLIENT: ContextVar[str] = ContextVar("llamagate_client", default="")


def client_name() -> str:
    """The name of the token the current RPC came with ("" while auth is off or outside an RPC)."""
    return _CLIENT.get()


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Credential:
    name: str  # what logs and per-client limits call the holder
    roles: frozenset[str]
    token_sha256: bytes = field(repr=False)  # the token itself is not kept

    @property
    def grants(self) -> frozenset[str]:
        return frozenset().union(*(GRANTS[role] for role in self.roles))


@dataclass(frozen=True)
class AuthSettings:
    credentials: tuple[Credential, ...] = ()  # none: authentication is off
    exempt: frozenset[str] = DEFAULT_EXEMPT  # services (or service/Method) anyone may call

    @property
    def enabled(self) -> bool:
        return bool(self.credentials)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthSettings:
        """Reads the tokens file too. Raises ValueError naming the variable
        (and line) when one is malformed; the message never holds a token."""
        entries: list[tuple[str, str, str, str]] = []  # (token, roles, name, where)
        path = env.get("LLAMAGATE_AUTH_TOKENS_FILE")
        if path is not None:
            entries += _file_entries(path.strip())
        listed = env.get("LLAMAGATE_AUTH_TOKENS")
        if listed is not None:
            entries += _env_entries(listed)
        exempt = env.get("LLAMAGATE_AUTH_EXEMPT")
        return cls(_credentials(entries), DEFAULT_EXEMPT if exempt is None else _exempt(exempt))


def _file_entries(path: str) -> list[tuple[str, str, str, str]]:
    """``TOKEN ROLE[,ROLE] [NAME]`` a line; blank lines and ``#`` lines are skipped."""
    variable = f"LLAMAGATE_AUTH_TOKENS_FILE ({path})"
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{variable}: cannot read it: {getattr(error, 'strerror', None) or error}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3):
            raise ValueError(f"{variable} line {number}: expected TOKEN ROLE[,ROLE] [NAME], got {len(fields)} fields")
        entries.append((fields[0], fields[1], fields[2] if len(fields) == 3 else "", f"{variable} line {number}"))
    if not entries:
        raise ValueError(f"{variable} holds no token: unset it to run without authentication")
    return entries


def _env_entries(listed: str) -> list[tuple[str, str, str, str]]:
    """``TOKEN:ROLE[+ROLE][:NAME]``, comma-separated."""
    entries = []
    for number, item in enumerate((part.strip() for part in listed.split(",")), 1):
        if not item:
            continue
        where = f"LLAMAGATE_AUTH_TOKENS entry {number}"
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}: expected TOKEN:ROLE[+ROLE][:NAME] (a token holds no ':' or ',')")
        entries.append((parts[0], parts[1].replace("+", ","), parts[2] if len(parts) == 3 else "", where))
    if not entries:  # set but empty: a secret that did not arrive must not turn authentication off
        raise ValueError("LLAMAGATE_AUTH_TOKENS is set but names no token: unset it to run without authentication")
    return entries


def _credentials(entries: list[tuple[str, str, str, str]]) -> tuple[Credential, ...]:
    credentials: list[Credential] = []
    for number, (token, roles_text, name, where) in enumerate(entries, 1):
        if not _TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: a token is at least {MIN_TOKEN_CHARS} visible ASCII characters;"
                             f" {_HOW_TO_MAKE}")
        roles = frozenset(role.strip() for role in roles_text.split(","))
        if not roles <= GRANTS.keys():
            raise ValueError(f"{where}: roles are {' and '.join(GRANTS)}, got {roles_text!r}")
        name = name or f"token-{number}"
        if not _NAME.fullmatch(name):
            raise ValueError(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)")
        credential = Credential(name, roles, digest(token))
        for other in credentials:
            if other.token_sha256 == credential.token_sha256:
                raise ValueError(f"{where}: the same token as {other.name}")
            if other.name == name:
                raise ValueError(f"{where}: the name {name!r} is taken: each token needs its own")
        credentials.append(credential)
    return tuple(credentials)


def _exempt(listed: str) -> frozenset[str]:
    names = frozenset(part.strip().lstrip("/") for part in listed.split(",") if part.strip())
    for name in names:
        if not _EXEMPT.fullmatch(name):
            raise ValueError(f"LLAMAGATE_AUTH_EXEMPT: {name!r} is not a service (grpc.health.v1.Health) or a"
                             " service/Method")
    return names


def required_role(method: str) -> str:
    """The role a method needs: its own; admin for a LlamaGate RPC not in the table (a new one is
    closed until given a role); any valid token for another service's that is not exempt."""
    return METHOD_ROLES.get(method, ADMIN if method.startswith(f"/{SERVICE}/") else INFERENCE)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization`` metadata, when it says ``Bearer TOKEN``."""
    value = next((v for k, v in metadata or () if k == "authorization"), None)
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RoleRequired(PermissionDenied):
    """A valid token whose roles lack the one the method needs."""

    def __init__(self, method: str, role: str, credential: Credential) -> None:
        super().__init__(f"{method} needs the {role} role; the token named {credential.name} has"
                         f" {', '.join(sorted(credential.roles))}")
        self.method, self.role = method, role

    @property
    def metadata(self) -> dict[str, str]:
        return {"method": self.method, "required_role": self.role}


_UNAUTHENTICATED = ("this service needs a valid token: send the metadata `authorization: Bearer TOKEN`"
                    " (llamagate's commands: LLAMAGATE_TOKEN or --token-file)")



class BearerAuth(grpc.aio.ServerInterceptor):
    """First in the interceptor chain: a refused call's request is never
    parsed, and the interceptors after it (size, stream limits) see only
    callers that may call, with ``client_name()`` set."""

    def __init__(self, settings: AuthSettings) -> None:
        self._credentials = settings.credentials
        self._exempt = settings.exempt
        if not settings.enabled:
            log.info("authentication off: no tokens configured (LLAMAGATE_AUTH_TOKENS_FILE, LLAMAGATE_AUTH_TOKENS),"
                     " so every caller may call every method")
        else:
            log.info("authentication on: %d tokens (%s); without a token: %s", len(self._credentials),
                     ", ".join(f"{c.name} {'+'.join(sorted(c.roles))}" for c in self._credentials),
                     ", ".join(sorted(self._exempt)) or "nothing")

    def match(self, token: str | None) -> Credential | None:
        """The credential of a presented token. Every configured digest is
        compared, whichever matches, so the time taken says nothing of which."""
        presented = digest(token if token is not None else "")  # no token: the same work, a digest nothing has
        found = None
        for credential in self._credentials:
            if compare_digest(presented, credential.token_sha256):
                found = credential
        return found

    def exempt(self, method: str) -> bool:
        service = method.lstrip("/").split("/", 1)[0]
        return service in self._exempt or method.lstrip("/") in self._exempt

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._credentials or self.exempt(method):
            return handler
        credential = self.match(bearer_token(handler_call_details.invocation_metadata))
        if credential is None:
            return _refusing(handler, Unauthenticated(_UNAUTHENTICATED), method)
        role = required_role(method)
        if role not in credential.grants:
            return _refusing(handler, RoleRequired(method, role, credential), method)
        return rebuilt(handler, lambda behaviour: _as_client(behaviour, credential.name))


def _as_client(behaviour: Behaviour, name: str) -> Behaviour:
    """The behaviour, run with ``client_name()`` answering ``name`` (each RPC runs in a task of its own)."""
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _CLIENT.set(name)
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response
        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _CLIENT.set(name)
        return await behaviour(request, context)
    return call


def _refusing(handler: grpc.RpcMethodHandler[Any, Any], error: Unauthenticated | RoleRequired,
              method: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind that ends the call with ``error``, never parsing its request."""
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.info("refused %s from %s: %s", method, context.peer(),
                 error if isinstance(error, RoleRequired) else "no valid token")
        await context.abort(status_for(error), str(error), trailing_details(error))
    return rebuilt(handler, lambda _: refuse, deserializer=_unread)


def _unread(data: bytes) -> None:
    return None
