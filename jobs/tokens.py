"""Who may upload batches over HTTP: one bearer token per scraper (`hoard tokens add|list|rm`),
checked by `POST /api/v1/batches` (hoardfs.gui.api) — not a login of `hoard gui`, which signs in people.

Here, below the GUI, as the logins are (`hoardfs.jobs.users`): the command manages tokens without
loading NiceGUI, the GUI only checks them. A token is 32 random bytes (`secrets.token_urlsafe`),
printed once by `hoard tokens add`; only its sha256 is kept, in `api.tokens_file` (JSON, mode
0600, beside the users file by default). A fast hash is enough for a random 256-bit secret —
argon2 slows guessing of passwords people choose, and no guess of a random token succeeds —
and it keeps each request's check at microseconds, where argon2 would take 0.1 s of a core.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.jobs.users import NAME, edit_private, read_private

#: what every token starts with: a reader of a log or a leaked config tells a hoardfs upload
#: token from other secrets (GitHub's `ghp_` convention)
PREFIX = "hoard_"


class TokenError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str  # hex, of the whole token (prefix included)
    created: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _read(path: Path) -> dict[str, dict[str, str]]:
    return read_private(path, "tokens file", "removing it revokes every token: `hoard tokens add` makes new ones",
                        TokenError)


def tokens(cfg: Settings) -> dict[str, Token]:
    """Every token by name (hashes only: the tokens themselves were shown once and never kept)."""
    return {name: Token(name, str(t.get("sha256", "")), str(t.get("created", "")))
            for name, t in _read(cfg.api_tokens_file).items()}


def _edit(cfg: Settings, change) -> None:
    edit_private(cfg.api_tokens_file, _read, change)


def add(cfg: Settings, name: str) -> str:
    """A new token for scraper `name`: returned once, only its hash kept."""
    if not NAME.match(name):
        raise TokenError(f"token name {name!r} is not allowed: lower case letters, digits, `_.-`, starting with a "
                         "letter, at most 32")
    if name in tokens(cfg):
        raise TokenError(f"token {name} exists; `hoard tokens rm {name}` revokes it, then add it again for a new one")
    token = PREFIX + secrets.token_urlsafe(32)
    entry = {"sha256": digest(token), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}

    def put(data: dict[str, dict[str, str]]) -> None:
        if name in data:  # added by another `hoard tokens add` meanwhile
            raise TokenError(f"token {name} exists; `hoard tokens rm {name}` revokes it first")
        data[name] = entry

    _edit(cfg, put)
    return token


def remove(cfg: Settings, name: str) -> None:
    """Revoke `name`'s token: the next request carrying it is refused (the file is read per request)."""
    if name not in tokens(cfg):
        raise TokenError(f"no token {name}; `hoard tokens list` shows them")
    _edit(cfg, lambda d: d.pop(name, None))


def check(cfg: Settings, token: str) -> str | None:
    """The name of the scraper whose token this is, or None. Compared by hash in constant time
    over every entry, so how long a refusal takes tells nothing of which hashes are stored."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    presented = digest(token)
    found = None
    for t in tokens(cfg).values():
        stored = t.sha256.encode("utf-8", "surrogateescape")  # (bytes: a person's edit may hold any text)
        if hmac.compare_digest(presented.encode(), stored) and stored:
            found = t.name
    return found
