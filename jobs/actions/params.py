"""`hoard action run --param NAME=VALUE`: the values given, typed against a contract's
`[params.NAME]`, with the defaults filled in.

Every bad item is one line naming the parameter (`--param NAME: …`) and what is allowed, exit 2.
A value is typed strictly — `int` is ASCII digits with an optional sign (not `5_000`, not
`٣`), `float` is a finite decimal, `bool` is true/false/1/0/yes/no — so two spellings of one
value (`0.10`, `0.1`) type to the same value and `canonical` gives the run key one text for them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.jobs.actions.contract import Contract, Param

Value = str | int | float | bool

#: the longest value a `str` parameter takes (it ends up on a command line)
MAX_VALUE = 4096
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class ParamError(HoardError):
    """A `--param` item that does not fit the contract: one line naming it (exit 2)."""

    exit_code = ExitCode.USAGE


def _declared(c: Contract) -> str:
    return f"declared: {', '.join(sorted(c.params))}" if c.params else f"action {c.action_id} declares no parameters"


def _typed(name: str, p: Param, raw: str) -> Value:
    shown = display(raw)
    where = f"--param {name}"
    if p.type == "str":
        if "\0" in raw:
            raise ParamError(f"{where}: the value holds a NUL character; give text without it")
        if len(raw.encode("utf-8", "surrogateescape")) > MAX_VALUE:
            raise ParamError(f"{where}: the value is longer than {MAX_VALUE} bytes")
        return raw
    if p.type == "choice":
        if raw not in p.choices:
            raise ParamError(f"{where}: '{shown}' is not allowed; one of {', '.join(p.choices)}")
        return raw
    if p.type == "bool":
        b = _BOOL.get(raw.strip().lower())
        if b is None:
            raise ParamError(f"{where}: '{shown}' is not a bool; give true/false, yes/no or 1/0")
        return b
    num: int | float
    if p.type == "int":
        if not _INT.fullmatch(raw):
            raise ParamError(f"{where}: '{shown}' is not a whole number (digits, e.g. {name}=42)")
        num = int(raw)
        if abs(num) >= 1 << 63:
            raise ParamError(f"{where}: {shown} is too large for a whole number (64 bits)")
    else:
        num = float(raw) if _FLOAT.fullmatch(raw) else math.nan
        if not math.isfinite(num):
            raise ParamError(f"{where}: '{shown}' is not a finite number (e.g. {name}=0.5)")
        num = num + 0.0 if num != 0 else 0.0  # -0.0 and 0.0 are one value (and one run key)
    if (p.min is not None and num < p.min) or (p.max is not None and num > p.max):
        lo = "" if p.min is None else _num(p.min)
        hi = "" if p.max is None else _num(p.max)
        raise ParamError(f"{where}: {shown} is outside the allowed range {lo}..{hi}")
    return num


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _from_config(name: str, p: Param, settings: Any) -> Value | None:
    """The default a parameter's `default_from` names in hoard.toml, typed; None when unset."""
    assert p.default_from is not None
    section, key = p.default_from.split(".")
    part = getattr(settings, section, None) if settings is not None else None
    if part is None or key not in type(part).model_fields:
        raise ParamError(f"--param {name}: its default comes from {p.default_from}, which is not a key of hoard.toml "
                         f"(docs/config.md); give --param {name}=VALUE")
    v = getattr(part, key)
    if v is None:
        return None
    try:
        return _typed(name, p, str(v) if not isinstance(v, bool) else str(v).lower())
    except ParamError as e:
        raise ParamError(f"{p.default_from} in hoard.toml, the default of {e}") from None


def parse_params(c: Contract, given: list[str], settings: Any = None) -> dict[str, Value]:
    """The parameters of one run: each declared name → its typed value (the given one, else
    the default). ParamError (one line, exit 2) for an item without "=", an unknown name, a
    name given twice, a value of the wrong type or outside the allowed ones, a required
    parameter not given. `settings` (the loaded hoard.toml) gives the defaults named by
    `default_from`."""
    raw: dict[str, str] = {}
    for item in given:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ParamError(f"--param '{display(item)}': write NAME=VALUE ({_declared(c)})")
        if name not in c.params:
            raise ParamError(f"--param {display(name)}: not a parameter of action {c.action_id}; {_declared(c)}")
        if name in raw:
            raise ParamError(f"--param {name}: given twice; give it once")
        raw[name] = value
    out: dict[str, Value] = {}
    for name, p in sorted(c.params.items()):
        if name in raw:
            out[name] = _typed(name, p, raw[name])
        elif p.default is not None:
            d = p.default
            out[name] = float(d) if p.type == "float" and not isinstance(d, bool) else d
        elif p.default_from is not None and (v := _from_config(name, p, settings)) is not None:
            out[name] = v
        elif p.default_from is not None:
            raise ParamError(f"--param {name}: {p.default_from} is not set in hoard.toml; set it there "
                             f"(docs/config.md) or give --param {name}=VALUE")
        else:
            allowed = f" (one of {', '.join(p.choices)})" if p.type == "choice" else f" (a {p.type})"
            raise ParamError(f"--param {name}: required (it has no default); give --param {name}=VALUE{allowed}")
    return out


def canonical(params: dict[str, Value]) -> str:
    """The parameters as one JSON text, sorted keys, no spaces — part of a run's key. A float
    is written as Python's shortest round-trip form, so one value always gives one text."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
