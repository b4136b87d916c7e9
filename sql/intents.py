"""Write-intents: the only way other systems change the database (S03 → S05).

An adapter or an action parser builds a `WriteIntent` (pure data, versioned, validated by
pydantic: unknown fields and wrong types are refused with the path of the bad field) and
hands it to `hoardfs.sql.apply.apply_write_intent(conn, intent)`. This module is the contract: the
models, `parse_intent`, the errors and the names of virtual assets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from hoardfs.base.config import describe_validation_error
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import NAME_PATTERN

INTENT_VERSION: Final = 1
Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
_strict = ConfigDict(extra="forbid")


class IntentError(HoardError):
    """A write-intent that cannot be applied; the message names the bad field."""

    exit_code = ExitCode.USAGE


class IntentConflict(IntentError):
    """The key was applied before with a different body."""


def virtual_description(kind: str, source: str, stable_id: str) -> str:
    """The canonical string whose sha256 names a virtual asset (documented in docs/adapters.md)."""
    return f"virtual:{kind}:{source}:{stable_id}"


def virtual_sha256(kind: str, source: str, stable_id: str) -> str:
    return hashlib.sha256(virtual_description(kind, source, stable_id).encode()).hexdigest()


class Physical(BaseModel):
    model_config = _strict
    size: int = Field(ge=0)
    file_type: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,10}$")
    locators: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = []


class Virtual(BaseModel):
    model_config = _strict
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    source: Name
    stable_id: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class NodeIn(BaseModel):
    model_config = _strict
    sha256: Sha
    physical: Physical | None = None
    virtual: Virtual | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NodeIn:
        if (self.physical is None) == (self.virtual is None):
            raise ValueError("a node is exactly one of physical or virtual")
        if self.virtual is not None:
            v = self.virtual
            if virtual_sha256(v.kind, v.source, v.stable_id) != self.sha256:
                raise ValueError("sha256 of a virtual node must be sha256(virtual:<kind>:<source>:<stable_id>)")
        return self


class MetadataIn(BaseModel):
    model_config = _strict
    node: Sha
    source: Name
    is_raw: bool = True
    is_root: bool = False
    title: str | None = None
    view_count: int | None = Field(default=None, ge=0)
    update_time: dt.datetime | None = None
    download_time: dt.datetime | None = None
    author: str | None = None
    user: str | None = None
    raw_metadata: dict[str, Any] | None = None
    raw_object: Sha | None = None
    #: source-specific fields, flattened `a.b.c` keys (≤ 16 KB); the typed src_<source> table
    #: gets them too once the source's schema proposal is accepted
    specific: dict[str, Any] | None = None

    @field_validator("specific")
    @classmethod
    def _bounded(cls, v: dict | None) -> dict | None:
        if v is not None and len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()) > 16384:
            raise ValueError("specific is limited to 16 KB; keep the full document as raw_object")
        return v

    @field_validator("raw_metadata")
    @classmethod
    def _small(cls, v: dict | None) -> dict | None:
        # measured as PostgreSQL prints jsonb (`{"a": 1, "b": 2}`), which its CHECK constraint counts
        if v is not None and len(json.dumps(v, ensure_ascii=False).encode()) > 1024:
            raise ValueError("raw_metadata is limited to 1 KB; store the full document and set raw_object")
        return v


class EdgeIn(BaseModel):
    model_config = _strict
    parent: Sha
    child: Sha
    relationship: Name

    @model_validator(mode="after")
    def _no_loop(self) -> EdgeIn:
        if self.parent == self.child:
            raise ValueError("an edge needs two different nodes")
        return self


class RelationshipIn(BaseModel):
    model_config = _strict
    name: Name
    action: int = Field(default=0, ge=0)


class BatchIn(BaseModel):
    model_config = _strict
    batch_id: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    action: int = Field(default=0, ge=0)
    source: Name | None = None
    members: list[Sha] = []
    seal: bool = False


class EventIn(BaseModel):
    model_config = _strict
    batch_id: str
    action: int = Field(ge=0)
    status: Literal["started", "done", "failed", "cancelled"]
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    detail: dict[str, Any] = {}


#: the longest label value (characters): the label indexes hold md5(value) (migration 010), so a
#: polygon of thousands of points or a long caption fits; a megabyte keeps a row sane
MAX_LABEL_VALUE = 1 << 20


class LabelIn(BaseModel):
    model_config = _strict
    node: Sha
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    value: Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)] = ""
    origin: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "human"


class UnlabelIn(BaseModel):
    """A label to take off a node: `value` None takes every value of `key` off."""

    model_config = _strict
    node: Sha
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    value: Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)] | None = None


#: the result tables a write-intent may fill: the columns a row may give, those it must give
#: (node_id and batch_id come from `node` and `batch_id`)
RESULT_COLUMNS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "result_canny": (frozenset({"status", "edge_ratio"}), frozenset({"status"})),
    "result_ocr_box": (frozenset({"box_no", "x", "y", "w", "h", "text", "confidence"}),
                       frozenset({"box_no", "x", "y", "w", "h"})),
    # perceptual hashes (migration 015): 64-bit patterns as signed bigints
    "result_image_hash": (frozenset({"phash", "dhash", "phash_flip"}), frozenset({"phash", "dhash", "phash_flip"})),
    # image embeddings (migration 017): the model's name and weights, the vector as base64 of
    # float32 little-endian (stored as bytea)
    "result_image_embedding": (frozenset({"model", "embedding"}), frozenset({"model", "embedding"})),
}

#: the result columns that hold text (the others hold numbers)
RESULT_TEXT_COLUMNS: Final = frozenset({"status", "text", "model", "embedding"})
#: the result columns that hold a 64-bit hash (a whole number, -2^63 ≤ v < 2^63: a bigint)
RESULT_HASH_COLUMNS: Final = frozenset({"phash", "dhash", "phash_flip"})


class ResultIn(BaseModel):
    """One row of a result table (an action's per-node result), for the batch that produced it."""

    model_config = _strict
    #: a built-in result table, or an action's own (`result_<action>`, made from its contract's
    #: [result_table] by hoardfs.sql.result_tables, which checks its columns and types at apply)
    table: Literal["result_canny", "result_ocr_box", "result_image_hash", "result_image_embedding"] | Annotated[
        str, StringConstraints(pattern=r"^result_[a-z0-9_]{1,56}$")]
    node: Sha
    batch_id: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    values: dict[str, str | int | float | bool | None | list[Any] | dict[str, Any]]

    @model_validator(mode="after")
    def _columns(self) -> ResultIn:
        if self.table not in RESULT_COLUMNS:
            return self  # an action's own table: its registered columns and types are checked at apply
        allowed, required = RESULT_COLUMNS[self.table]
        unknown = sorted(set(self.values) - allowed)
        if unknown:
            raise ValueError(f"{self.table} has no column {unknown[0]!r}; its columns: {', '.join(sorted(allowed))}")
        missing = sorted(c for c in required if self.values.get(c) is None)
        if missing:
            raise ValueError(f"{self.table} needs column {missing[0]!r}")
        for col, v in sorted(self.values.items()):
            text = col in RESULT_TEXT_COLUMNS
            if col in RESULT_HASH_COLUMNS and v is not None and (
                    isinstance(v, bool) or not isinstance(v, int) or not -(1 << 63) <= v < 1 << 63):
                raise ValueError(f"{self.table}.{col} takes a 64-bit hash as a whole number from -2^63 to 2^63 - 1 "
                                 f"(a bigint), not {v!r:.40}")
            if v is not None and (isinstance(v, str) != text or isinstance(v, (bool, list, dict))
                                  or col == "box_no" and not isinstance(v, int)):
                raise ValueError(f"{self.table}.{col} takes {'text' if text else 'a number'}, not {v!r:.40}")
        return self


class MemoIn(BaseModel):
    """An input an action run's worker ran on (`action_memo`): a later run of that action,
    version and parameters (`params` is the sha256 of their canonical JSON) over that input
    reuses run `run` instead of running it again."""

    model_config = _strict
    action: int = Field(ge=1)
    version: int = Field(ge=1)
    params: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    node: Sha
    run: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class WriteIntent(BaseModel):
    """Everything one step wants written, applied all or nothing."""

    model_config = _strict
    version: Literal[1] = INTENT_VERSION
    key: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    sources: list[Name] = []
    relationships: list[RelationshipIn] = []
    nodes: list[NodeIn] = []
    metadata: list[MetadataIn] = []
    edges: list[EdgeIn] = []
    batches: list[BatchIn] = []
    events: list[EventIn] = []
    labels: list[LabelIn] = []
    #: labels taken off (applied after `labels`)
    unlabels: list[UnlabelIn] = []
    #: rows of the result tables (an action's per-node results)
    results: list[ResultIn] = []
    #: physical nodes to black-list (`physical_content.in_black_list`; an AC1 rule)
    black_list: list[Sha] = []
    #: the inputs an action run's worker ran on (`action_memo`)
    memo: list[MemoIn] = []

    @model_validator(mode="after")
    def _each_node_one_kind(self) -> WriteIntent:
        """A node listed twice is one kind both times: listed as physical and as virtual, it
        got both detail rows (a physical_content and a virtual_asset of one node)."""
        first: dict[str, tuple[int, bool]] = {}
        for i, n in enumerate(self.nodes):
            j, virtual = first.setdefault(n.sha256, (i, n.virtual is not None))
            if virtual != (n.virtual is not None):
                raise ValueError(f"nodes[{i}] lists node {n.sha256} as {'virtual' if n.virtual else 'physical'}, "
                                 f"nodes[{j}] as {'virtual' if virtual else 'physical'}: a node is one kind")
        return self

    def digest(self) -> bytes:
        """sha256 of the body (everything but the key) as pydantic serialises it: field order
        is the model's, list order and the key order of free-form dicts are the caller's —
        a retried intent built by the same code hashes the same. An empty `unlabels`,
        `results`, `black_list` or `memo` is left out: an intent applied before the field
        existed hashes as it did then."""
        skip = {"key"} | {f for f in ("unlabels", "results", "black_list", "memo") if not getattr(self, f)}
        return hashlib.sha256(self.model_dump_json(exclude=skip).encode()).digest()


def parse_intent(data: dict[str, Any] | str | bytes) -> WriteIntent:
    """Validate raw data (a dict or JSON); IntentError names the first bad field's path."""
    try:
        if isinstance(data, (str, bytes)):
            intent = WriteIntent.model_validate_json(data)
        else:
            intent = WriteIntent.model_validate(data)
    except ValidationError as e:
        raise IntentError(f"write-intent rejected: {describe_validation_error(e, WriteIntent)}") from None
    # the model as JSON (pydantic's serialiser: 5x faster than model_dump + _nul_at over 10,000
    # nodes) holds `\u0000` wherever a string or key holds NUL; only then is the path looked for
    # (a literal backslash-u0000 in a string matches too: the walk then finds nothing, as before)
    where = _nul_at(intent.model_dump(), "") if "\\u0000" in intent.model_dump_json() else None
    if where is not None:
        raise IntentError(f"write-intent rejected: {where or 'a value'} holds NUL (U+0000), which PostgreSQL text "
                          "and jsonb cannot store; replace it (the adapters write U+FFFD)")
    return intent


def _nul_at(v: Any, path: str) -> str | None:
    """The path of the first string (or dict key) holding NUL, or None."""
    if isinstance(v, str):
        return path if "\x00" in v else None
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(k, str) and "\x00" in k:
                return f"{path}.{k!r}".lstrip(".")
            found = _nul_at(x, f"{path}.{k}".lstrip("."))
            if found is not None:
                return found
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            found = _nul_at(x, f"{path}[{i}]")
            if found is not None:
                return found
    return None
