"""Studio access control: who may connect (name → token), how many jobs each may queue, which
models each may use. Light (no torch): the CLI reads the file before anything loads.

The file (``--users FILE``) is JSON::

    {"users": {
        "alice": {"token": "long-random-secret", "max_jobs": 4, "models": ["tiny-sd"]},
        "bob":   {"token": "another-secret"}
    }}

``max_jobs`` (default: the server's per-client cap) counts the user's jobs over all their
connections; ``models`` (default: every model the server offers) must be models the server
offers. Tokens are compared in constant time and never logged or repeated in an error.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.config import ConfigError
from shared import protocol as p

MIN_TOKEN_CHARS = 12


@dataclass(frozen=True)
class User:
    name: str
    token: str
    max_jobs: int | None = None  # None: the server's per-client cap
    models: tuple[str, ...] | None = None  # None: every model the server offers

    def __repr__(self) -> str:  # never the token: a user may end up in a log line
        return f"User({self.name!r})"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


class Users:
    """The studio's users, looked up by the token a client sends in its ``hello``."""

    def __init__(self, users: list[User]) -> None:
        self.users = list(users)

    def __len__(self) -> int:
        return len(self.users)

    def identify(self, token: Any) -> User | None:
        """The user whose token this is, or None. Every user's token is compared, each in
        constant time, so the time taken says nothing about which (or how much of one) matched."""
        given = token.encode("utf-8") if isinstance(token, str) else b""
        found = None
        for user in self.users:
            if hmac.compare_digest(given, user.token.encode("utf-8")) and given:
                found = user
        return found


def parse_users(data: Any, models: list[str], where: str = "the users file") -> Users:
    """Users from the file's parsed JSON, checked against the server's ``models``."""
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f'{where} must be a JSON object {{"users": {{"name": {{"token": '
                          f'"..."}}, ...}}}} with at least one user.')
    users, tokens = [], set()
    for name, entry in entries.items():
        what = f"{where}, user {name!r}"
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise ConfigError(f"{where}: user names must be 1 to 64 characters.")
        if not isinstance(entry, dict):
            raise ConfigError(f'{what}: expected {{"token": "...", ...}}.')
        unknown = set(entry) - {"token", "max_jobs", "models"}
        if unknown:
            raise ConfigError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}; the "
                              f"fields are token, max_jobs and models.")
        token = entry.get("token")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{what}: the token must be a string of at least "
                              f"{MIN_TOKEN_CHARS} characters.")
        if token in tokens:
            raise ConfigError(f"{what}: two users share a token; give each their own.")
        tokens.add(token)
        max_jobs = entry.get("max_jobs")
        if max_jobs is not None and (type(max_jobs) is not int or max_jobs < 1):
            raise ConfigError(f"{what}: max_jobs must be a whole number, 1 or more.")
        allowed = entry.get("models")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(m, str) for m in allowed):
                raise ConfigError(f"{what}: models must be a list of model names.")
            unknown_models = [m for m in allowed if m not in models]
            if unknown_models:
                raise ConfigError(f"{what}: {', '.join(unknown_models)} not served; the server "
                                  f"offers {', '.join(models)} (--model, --allow-model).")
            allowed = tuple(allowed)
        users.append(User(name, token, max_jobs, allowed))
    return Users(users)


def load_users(path: str | Path, models: list[str]) -> Users:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the users file {path}: {exc.strerror}.") from None
    except ValueError as exc:  # the message names the line, never quotes it (a token may be there)
        line = getattr(exc, "lineno", "?")
        raise ConfigError(f"The users file {path} is not valid JSON (line {line}).") from None
    return parse_users(data, models, where=str(path))


# --- what the websocket front asks (server.app) ---------------------------------------------


def studio_user(users: Users, hello: str | bytes) -> User:
    """The user a ``hello`` frame's token names, or the ``unauthorized`` error to send back."""
    try:
        message = json.loads(hello) if isinstance(hello, (str, bytes)) else None
    except ValueError:
        message = None
    token = message.get("token") if isinstance(message, dict) else None
    user = users.identify(token)
    if user is None:
        raise p.ProtocolError(p.E_UNAUTHORIZED, "Wrong or missing access token: enter the token "
                                                "your studio admin gave you (--users).")
    return user


def user_models(user: User | None, caps: p.Capabilities) -> p.Models:
    """The ``models`` answer for ``user``: only the models they may use (all without a user)."""
    models = [m for m in caps.models if user is None or user.may_use(m)]
    info = {m: i for m, i in caps.model_info.items() if m in models}
    return p.Models(models, caps.current_model, info)


def user_welcome(welcome: p.Welcome, user: User) -> p.Welcome:
    """The welcome for ``user``: their name, and only the models they may use."""
    caps = welcome.capabilities
    mine = user_models(user, caps)
    caps.models, caps.model_info = mine.models, mine.model_info
    return replace(welcome, user=user.name)


def check_user_model(user: User, request: Any, current_model: str) -> None:
    """Refuse a submit or model load of a model ``user`` may not use."""
    if isinstance(request, p.CompleteSubmit):
        model, ref = request.request.model or current_model, request.request.ref
    elif isinstance(request, p.LoadModel):
        model, ref = request.model, None
    else:
        return
    if not user.may_use(model):
        raise p.ProtocolError(p.E_UNKNOWN_MODEL, f"Model {model!r} is not available to "
                                                 f"{user.name}; you may use: "
                                                 f"{', '.join(user.models or ())}.", ref=ref)
