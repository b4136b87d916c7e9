"""Who may start and watch runs: the logins of `hoard gui`, their roles, argon2 hashes, what
each role may do, and the limit on failed logins.

Here, below the GUI, so that `hoard users` (and `hoard demo`, which makes the demo's login)
manage accounts without loading NiceGUI; the GUI's sign-in (`hoardfs.gui.auth`) checks against it.

Users come from two places: `[[gui.users]]` in hoard.toml (read-only here) and
`gui.users_file` (JSON, mode 0600), which `hoard users add|passwd|rm` edits. A name in both
is taken from hoard.toml. Only argon2 hashes are ever stored.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, flocked

#: roles from least to most; each may do what the ones before it may
ROLES = ("viewer", "operator", "admin")
NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
#: what needs which role at least (a page hides a control the role may not use, and the
#: action checks again: a hidden button is not a permission)
NEEDS = {"view": "viewer", "launch": "operator", "cancel": "operator", "retry": "operator", "release": "operator",
         "delete": "operator", "flag": "operator", "users": "admin"}
MIN_PASSWORD = 10
#: passwords every guessing list starts with (compared lower-cased, also without trailing
#: digits and `!`): refused whatever their length
COMMON_PASSWORDS = frozenset("""
password passw0rd passwort motdepasse contrasena 1234567890 12345678910 0123456789 9876543210
qwertyuiop qwertzuiop azertyuiop asdfghjkl zxcvbnm qwerty qwertz azerty iloveyou letmein welcome
changeme changeit administrator admin root toor secret supersecret trustno1 dragon monkey
football baseball sunshine princess starwars whatever abc123 abcdefgh abcdefghij hoardfs hoard
""".split())

_hasher = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """A hash to verify against for an unknown name: it costs what a real hash costs, so an
    unknown name answers as slowly as a wrong password and does not tell which names exist.
    Made on the first login, not at import: an argon2 hash (64 MiB, ~0.1-0.8 s of CPU) was paid
    by every process that imports this module (`hoard users`, `hoard tokens`, `hoard demo`, the
    GUI), most of which never authenticate anyone."""
    return _hasher.hash("not a password of anyone")


class UserError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str
    from_config: bool


def may(role: str, action: str) -> bool:
    """Whether `role` may do `action` (a key of NEEDS)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(NEEDS[action])


def hash_password(password: str, name: str = "") -> str:
    """The argon2 hash of a password that passes the policy (UserError names what fails)."""
    why = weak_password(password, name)
    if why:
        raise UserError(f"the password is {why}; choose another (at least {MIN_PASSWORD} characters, not a common "
                        "one, not the user's name, not a repeat or a keyboard run)")
    return _hasher.hash(password)


#: rows a finger runs along (the rows and columns of common keyboard layouts, the alphabet, the
#: digits): three or more neighbours on one row, in order either way, are a run (`qwer`, `4321`, `1qaz`)
RUNS = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "qwertzuiop",
        "yxcvbnm", "azertyuiop", "qsdfghjklm", "wxcvbn", "!@#$%^&*()", "1qaz", "2wsx", "3edc", "4rfv", "5tgb",
        "6yhn", "7ujm", "8ik,", "9ol.", "0p;/")
#: (a, b) -> the (row, direction)s on which b follows a
_STEPS: dict[tuple[str, str], set[tuple[int, int]]] = {}
for _r, _line in enumerate(RUNS):
    for _d, _row in enumerate((_line, _line[::-1])):
        for _a, _b in zip(_row, _row[1:], strict=False):
            _STEPS.setdefault((_a, _b), set()).add((_r, _d))
#: the fewest characters a password must hold besides repeats, runs, common passwords and the name
MIN_REST = 6
#: how much of a password the pattern check reads (its work grows with the square of the
#: length); characters past it count as other characters
PATTERN_SPAN = 256


def weak_password(password: str, name: str = "") -> str | None:
    """Why `password` is refused, or None: shorter than MIN_PASSWORD, white space or a few
    characters repeated (`12121212…`, eight spaces), a common password (COMMON_PASSWORDS, also
    with digits or `!` after it), the user's name with little added (fewer than six
    characters, or no letter: `bob1234567890`), a short part repeated (what repeats the part
    before it does not count towards MIN_PASSWORD: `adminadmin12`), or mostly patterns — fewer
    than MIN_REST characters besides repeats, keyboard runs, common passwords and the name
    (`patterns`: `1qaz2wsx3edc`, `bobbob-qwerty`)."""
    low = password.lower()
    if len(password) < MIN_PASSWORD:
        return f"too short ({len(password)} characters)"
    if len(set(password.strip())) < 4:
        return "too few different characters"
    if low in COMMON_PASSWORDS or low.rstrip("0123456789!") in COMMON_PASSWORDS or low.lstrip("0123456789") in COMMON_PASSWORDS:
        return "a common password"
    rest = low.replace(name.lower(), "") if name else low
    if name and name.lower() in low and (len(rest) < 6 or not any(c.isalpha() for c in rest)):
        return "the user's name with little added"
    found = patterns(low, name.lower())
    if len(password) - found.get("a repeated part", 0) < MIN_PASSWORD:
        return (f"a short part repeated ({len(password) - found.get('a repeated part', 0)} characters without the "
                f"repeats; at least {MIN_PASSWORD} needed)")
    other = len(password) - sum(found.values())
    if other < MIN_REST:
        return f"mostly {' and '.join(found)} (only {other} other character{'s' * (other != 1)}; at least {MIN_REST} needed)"
    return None


def patterns(low: str, name: str = "") -> dict[str, int]:
    """How many characters of `low` each kind of pattern covers (a character counts for the
    first kind that covers it, in this order). The patterns, each found anywhere: a part of
    three characters or more that repeats the part just before it (`admin|admin`: the copy is
    covered, the first one not) — a shorter one from its third time on (`ab|ab|ab`, `a|a|a`:
    two of those turn up by chance in random passwords); the user's name (three characters or
    more); a run of three or more along one of RUNS; a common password of four letters or more."""
    text = low[:PATTERN_SPAN]
    n = len(text)
    covered = [""] * n

    def mark(start: int, end: int, kind: str) -> None:
        for i in range(start, end):
            covered[i] = covered[i] or kind

    for i in range(1, n):
        for u in range(min(i, n - i), 0, -1):  # the longest copy of what stands just before i
            if text[i:i + u] == text[i - u:i] and (u > 2 or text[i - 2 * u:i - u] == text[i:i + u]):
                mark(i, i + u, "a repeated part")
                break
    if len(name) >= 3:
        for m in re.finditer(re.escape(name), text):
            mark(m.start(), m.end(), "the user's name")
    for i in range(n - 2):
        for way in _STEPS.get((text[i], text[i + 1]), ()):
            j = i + 1
            while j + 1 < n and way in _STEPS.get((text[j], text[j + 1]), ()):
                j += 1
            if j - i >= 2:
                mark(i, j + 1, "a keyboard run")
    for word in COMMON_PASSWORDS:
        if len(word) >= 4:
            for m in re.finditer(re.escape(word), text):
                mark(m.start(), m.end(), "a common password")
    return {kind: covered.count(kind) for kind in dict.fromkeys(covered) if kind}


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    return read_private(path, "users file", "`hoard users add` writes a new one", UserError)


def read_private(path: Path, what: str, if_removed: str, error: type[HoardError]) -> dict[str, dict[str, str]]:
    """The JSON object of names in `path` (the users file, the tokens file; {} when there is
    none); `error` naming `what` and what removing it does when it cannot be read or is not one."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise error(f"{path}: cannot read the {what} ({e}); fix or remove it ({if_removed})", ExitCode.DATA) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise error(f"{path}: not a {what} (expected a JSON object of names); fix or remove it", ExitCode.DATA)
    return data


def users(cfg: Settings) -> dict[str, User]:
    """Every user, by name: the users file's, then hoard.toml's (which win)."""
    out = {name: User(name, u.get("role", "viewer"), u.get("password_hash", ""), False)
           for name, u in _read_file(cfg.gui_users_file).items()}
    for u in cfg.gui.users:
        out[u.name] = User(u.name, u.role, u.password_hash, True)
    return out


def authenticate(cfg: Settings, name: str, password: str) -> User | None:
    """The user if `password` is theirs, else None (also for an unknown name, as slowly)."""
    user = users(cfg).get(name)
    dummy = _dummy()  # made by the first login whatever its name: that one is slower for a known name too
    try:
        _hasher.verify(user.password_hash if user else dummy, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return user


def _edit(cfg: Settings, name: str, change) -> None:
    edit_private(cfg.gui_users_file, _read_file, change)


def edit_private(path: Path, read: Callable[[Path], dict[str, Any]], change: Callable[[dict[str, Any]], object]) -> None:
    """`change` the JSON object in `path` (as `read` reads it) under the file's lock, and write it
    back atomically, 0600 from its first byte: the users file (password hashes) and the tokens
    file (hoardfs.jobs.tokens) are nobody else's to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with flocked(path.with_name(f".{path.name}.lock")):
        data = read(path)
        change(data)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode(), lambda fd: os.fchmod(fd, 0o600))


def _in_config(cfg: Settings, name: str) -> bool:
    return any(u.name == name for u in cfg.gui.users)


def add(cfg: Settings, name: str, role: str, password: str) -> None:
    if not NAME.match(name):
        raise UserError(f"user name {name!r} is not allowed: lower case letters, digits, `_.-`, "
                        "starting with a letter, at most 32")
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if name in users(cfg):
        raise UserError(f"user {name} exists; `hoard users passwd {name}` changes the password, "
                        f"`hoard users rm {name}` removes it")
    hashed = hash_password(password, name)
    _edit(cfg, name, lambda d: d.__setitem__(name, {"role": role, "password_hash": hashed}))


def passwd(cfg: Settings, name: str, password: str) -> None:
    if _in_config(cfg, name):
        raise UserError(f"user {name} is defined in {cfg.source or 'hoard.toml'} ([[gui.users]]); change its "
                        "password_hash there (`hoard users hash` prints one)")
    if name not in users(cfg):
        raise UserError(f"no user {name}; `hoard users list` shows them")
    hashed = hash_password(password, name)
    _edit(cfg, name, lambda d: d[name].__setitem__("password_hash", hashed))


def remove(cfg: Settings, name: str) -> None:
    if _in_config(cfg, name):
        raise UserError(f"user {name} is defined in {cfg.source or 'hoard.toml'} ([[gui.users]]); remove it there")
    if name not in users(cfg):
        raise UserError(f"no user {name}; `hoard users list` shows them")
    _edit(cfg, name, lambda d: d.pop(name))


class LoginLimiter:
    """Failed logins, counted *before* the password is checked (docs/security.md, Logins).

    `begin(name, client)` decides and, when it lets the attempt go on, records it as a failure in
    the same step under one lock — so parallel attempts cannot all pass the check before any of
    them is recorded; `end` takes the record back for a login that succeeded (or was never
    checked: the GUI was busy). Three counts within `window_s`:

    - name at this client: `attempts` failures lock that name *at that client* (guessing one
      password from one place);
    - name at every client together: NAME_FACTOR × `attempts` lock the name everywhere (guessing
      from many places); one client adds at most `attempts` to it, so no single client can;
    - client over every name: past CLIENT_FACTOR × `attempts` failures the client has one try per
      name left (spraying a password over many names) — a name that has not failed there in the
      window is still checked, so a correct password of a name that is not locked signs in.

    A login from a recognised device (`device`: a browser that signed in as that name before,
    hoardfs.gui.devices) is counted on that device and name alone — `attempts` failures a window lock
    that device out of that name — and the three counts above (strangers') neither hold it back
    nor grow by it: no stranger, whatever they guess, locks the owner's own browser out.

    In memory: a restart forgets, which only helps an owner locked out by a typo."""

    NAME_FACTOR = 4
    CLIENT_FACTOR = 4
    #: keys kept before a sweep drops the ones whose failures have all left the window
    SWEEP_AT = 10_000

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[str, collections.deque[tuple[float, object]]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> collections.deque[tuple[float, object]]:
        q = self._failures.get(key) or collections.deque()
        while q and q[0][0] <= now - self.window_s:
            q.popleft()
        return q

    @staticmethod
    def _keys(name: str, client: str, device: str | None = None) -> tuple[str, ...]:
        """The counts an attempt adds to: the first is the one a correct password clears."""
        if device is not None:
            return (f"d:{device}\0{name}",)
        return f"p:{client}\0{name}", f"n:{name}", f"c:{client}"

    def begin(self, name: str, client: str, device: str | None = None) -> tuple[object | None, float]:
        """(a token for `end`, 0) when this attempt may be checked — it is counted as a failure
        already; (None, seconds until it may) when it is refused. `device`: the id of the
        recognised device it comes from, if any."""
        now = time.monotonic()
        keys = self._keys(name, client, device)
        with self._lock:
            if len(self._failures) > self.SWEEP_AT:
                self._failures = {k: q for k in list(self._failures) if (q := self._recent(k, now))}
            counts = {k: self._recent(k, now) for k in keys}

            def until_under(key: str, limit: int) -> float:  # seconds until `key` has fewer than `limit`
                q = counts[key]
                return q[len(q) - limit][0] + self.window_s - now if len(q) >= limit else 0.0

            if device is not None:
                wait = until_under(keys[0], self.attempts)
            else:
                pair, nkey, ckey = keys
                pair_wait = until_under(pair, self.attempts)
                if until_under(ckey, self.attempts * self.CLIENT_FACTOR) > 0 and counts[pair]:
                    # one try per name left: until this name's failures here have gone, or the client's
                    # are under the limit again (and then the name's own limit still holds)
                    pair_wait = min(until_under(pair, 1),
                                    max(until_under(ckey, self.attempts * self.CLIENT_FACTOR), pair_wait))
                wait = max(pair_wait, until_under(nkey, self.attempts * self.NAME_FACTOR))
            if wait > 0:
                for k, q in counts.items():  # no key kept for a name only ever refused
                    if not q:
                        self._failures.pop(k, None)
                return None, wait
            token = (now, object())
            for k, q in counts.items():
                q.append(token)
                self._failures[k] = q
            return token, 0.0

    def end(self, name: str, client: str, token: object, succeeded: bool, device: str | None = None) -> None:
        """The attempt `begin` counted was not a failure after all: the password was right
        (`succeeded`: the name's earlier failures at this client, or on this device, are forgiven
        too — not those of the name everywhere, which a login every few seconds would otherwise
        reset for a guesser elsewhere), or it was never checked."""
        keys = self._keys(name, client, device)
        with self._lock:
            for k in keys:
                q = self._failures.get(k)
                if q is not None:
                    if succeeded and k == keys[0]:
                        q.clear()
                    elif token in q:
                        q.remove(token)  # type: ignore[arg-type]  # the (time, id) `begin` appended, opaque to callers
                    if not q:
                        self._failures.pop(k, None)
