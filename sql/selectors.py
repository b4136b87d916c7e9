"""Node selectors: a pydantic `Selector` compiled to parametrised SQL (S07 asks, S05 answers).

No value from a selector ever becomes SQL text: values travel as query parameters, and
the few names that shape the query (metadata fields, operators, orderings) are chosen from
fixed tables here — pydantic rejects anything else with the path of the bad field. Tree
conditions walk edges with recursive CTEs (see `_tree` for the two plans).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from hoardfs.base.config import describe_validation_error
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql import result_tables
from hoardfs.sql.browse import search_query
from hoardfs.sql.intents import Name, Sha

_strict = ConfigDict(extra="forbid")

#: metadata fields a selector may test, and their column in common_metadata
FIELDS = {"title": "title", "view_count": "view_count", "update_time": "update_time",
          "download_time": "download_time", "author": "author", "user": "user_name",
          "is_raw": "is_raw", "is_root": "is_root"}
OPS = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
ORDERS = {"node_id": "n.node_id", "size": "pc.size DESC, n.node_id", "sha256": "n.sha256"}


class SelectorError(HoardError):
    exit_code = ExitCode.USAGE


class FieldPredicate(BaseModel):
    model_config = _strict
    field: Literal["title", "view_count", "update_time", "download_time", "author", "user", "is_raw", "is_root"]
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "contains", "in"]
    value: str | int | float | bool | dt.datetime | list[str | int | float]


class LabelPredicate(BaseModel):
    model_config = _strict
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    value: str | None = None  # None: any value
    present: bool = True


#: `result.ACTION.COLUMN OP VALUE`, the short form of a result predicate (`result.` optional)
_RESULT_FORM = re.compile(r"\s*(?:result\.)?([a-z][a-z0-9_-]{0,63})\.([a-z][a-z0-9_]{0,39})\s*"
                          r"(==|=|!=|<>|<=|>=|<|>)\s*(.*?)\s*")
_SHORT_OPS = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


class ResultPredicate(BaseModel):
    """A column of an action's own result table (`result_<action>`, its contract's
    [result_table]): nodes with a row of that action whose column passes. Also written as one
    string, `"result.maskr.score > 0.5"`."""

    model_config = _strict
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
    column: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "exists"]
    value: str | int | float | bool | list[str | int | float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: object) -> object:
        if not isinstance(data, str):
            return data
        m = _RESULT_FORM.fullmatch(data)
        if m is None:
            raise ValueError(f"{data[:80]!r} is not `result.ACTION.COLUMN OP VALUE` (OP one of = != < <= > >=), "
                             "e.g. \"result.maskr.score > 0.5\"")
        raw = m.group(4)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if not isinstance(value, (str, int, float, bool)):
            value = raw
        return {"action": m.group(1), "column": m.group(2), "op": _SHORT_OPS[m.group(3)], "value": value}


class TreePredicate(BaseModel):
    """A related node within `max_depth` edges (of `relationship`, or any) that matches."""

    model_config = _strict
    relationship: Name | None = None
    max_depth: int = Field(default=1, ge=1, le=32)
    sha256: Sha | None = None
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] | None = None  # virtual kind
    source: Name | None = None
    label: LabelPredicate | None = None


class Selector(BaseModel):
    model_config = _strict
    sources: list[Name] = []
    batches: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = []
    file_types: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{1,10}$")]] = []
    kinds: list[Literal["image", "video", "audio", "text"]] = []
    metadata: list[FieldPredicate] = []
    labels: list[LabelPredicate] = []
    #: columns of actions' own result tables (`result.maskr.score > 0.5`)
    results: list[ResultPredicate] = []
    has_ancestor: list[TreePredicate] = []
    has_descendant: list[TreePredicate] = []
    is_root: bool | None = None
    #: the file's size in bytes, both bounds included (`max_size = 4095`: under 4 KiB)
    min_size: int | None = Field(default=None, ge=0)
    max_size: int | None = Field(default=None, ge=0)
    #: words of the title, author, user name or metadata values, every one (each as a word or,
    #: from 3 characters on, the start of one): the GUI's asset search, on its full-text index
    text: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    include_black_listed: bool = False
    #: also the nodes derived from a black-listed one (its crops, thumbnails, frames and theirs),
    #: which are left out with it by default; `include_black_listed` keeps them too
    include_blacklisted_lineage: bool = False
    include_deleted: bool = False
    order: Literal["node_id", "size", "sha256"] = "node_id"
    limit: int | None = Field(default=None, ge=1, le=100_000_000)


@dataclass
class NodeSet:
    node_ids: list[int]
    sha256: list[str]
    sizes: list[int]
    total_bytes: int

    def __len__(self) -> int:
        return len(self.node_ids)


class _Params:
    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def add(self, value: object) -> sql.Composable:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return sql.Placeholder(name)


def _tree(p: _Params, t: TreePredicate, up: bool) -> sql.Composable:
    """Nodes that have (up=True: an ancestor / False: a descendant) matching `t` within max_depth.

    Two plans. A predicate naming one node (`sha256`) walks away from that node once and
    tests membership: its subtree is small. Any other predicate (a kind, a label) may match
    thousands of seeds whose subtrees cover most of the graph, so each candidate row walks
    towards its own relatives instead (a correlated EXISTS over the edge indexes, at most
    max_depth steps), which PostgreSQL evaluates after the cheaper filters of the selector.
    Each relative it reaches is tested on its own, by its keys (`OFFSET 0` keeps that test a
    subplan): joined instead, the planner — which guesses a recursive walk at ~140 rows where
    it holds a few — scanned every matching seed (every channel's virtual_asset row) once per
    candidate, so each candidate cost what the graph held (bench/scale.py's broad selector:
    53 s at 1 M nodes, 10 s now; tests/test_selectors_plan.py).
    """
    match: list[sql.Composable] = []
    if t.sha256:
        match.append(sql.SQL("m.sha256 = {}").format(p.add(bytes.fromhex(t.sha256))))
    if t.kind or t.source:
        cond: list[sql.Composable] = [sql.SQL("va.node_id = m.node_id")]
        if t.kind:
            cond.append(sql.SQL("va.kind = {}").format(p.add(t.kind)))
        if t.source:
            cond.append(sql.SQL("va.source_id = (SELECT source_id FROM source WHERE name = {})").format(p.add(t.source)))
        match.append(sql.SQL("EXISTS (SELECT 1 FROM virtual_asset va WHERE {})").format(sql.SQL(" AND ").join(cond)))
    if t.label:
        match.append(_label(p, t.label, "m"))
    matches = sql.SQL(" AND ").join(match) if match else sql.SQL("true")
    rel = (sql.SQL(" AND e.rel_id IN (SELECT rel_id FROM relationship_type WHERE name = {})").format(p.add(t.relationship))
           if t.relationship else sql.SQL(""))
    near, far = ("child_id", "parent_id") if up else ("parent_id", "child_id")
    depth = p.add(t.max_depth)
    if t.sha256:  # walk away from the one matching node, once
        return sql.SQL(
            "n.node_id IN (WITH RECURSIVE walk(node_id, depth) AS ("
            " SELECT e.{near}, 1 FROM edge e JOIN node m ON m.node_id = e.{far} WHERE {matches}{rel}"
            " UNION SELECT e.{near}, w.depth + 1 FROM edge e JOIN walk w ON e.{far} = w.node_id"
            " WHERE w.depth < {depth}{rel}) SELECT node_id FROM walk)"
        ).format(near=sql.Identifier(near), far=sql.Identifier(far), matches=matches, rel=rel, depth=depth)
    return sql.SQL(  # walk from the candidate towards its relatives
        "EXISTS (WITH RECURSIVE walk(node_id, depth) AS ("
        " SELECT e.{far}, 1 FROM edge e WHERE e.{near} = n.node_id{rel}"
        " UNION SELECT e.{far}, w.depth + 1 FROM edge e JOIN walk w ON e.{near} = w.node_id"
        " WHERE w.depth < {depth}{rel}) SELECT 1 FROM walk"
        " WHERE EXISTS (SELECT 1 FROM node m WHERE m.node_id = walk.node_id AND {matches} OFFSET 0))"
    ).format(near=sql.Identifier(near), far=sql.Identifier(far), matches=matches, rel=rel, depth=depth)


#: the physical nodes derived from a black-listed node: its descendants by edges between physical
#: nodes (crop_of, thumbnail_of, frame_of … — never the ingest's post → media edges from a
#: virtual node), walked down once per query from the black-listed nodes (their partial index,
#: migration 020) over the edge's primary key (parent_id first). UNION (not UNION ALL) drops a
#: node met again, so a cycle of edges ends the walk.
_BLACK_LINEAGE = sql.SQL(
    "black_lineage(node_id) AS ("
    " SELECT e.child_id FROM physical_content b JOIN edge e ON e.parent_id = b.node_id"
    " JOIN node k ON k.node_id = e.child_id AND k.is_physical WHERE b.in_black_list"
    " UNION SELECT e.child_id FROM black_lineage w JOIN edge e ON e.parent_id = w.node_id"
    " JOIN node k ON k.node_id = e.child_id AND k.is_physical)")


def _label(p: _Params, lp: LabelPredicate, alias: str) -> sql.Composable:
    cond = sql.SQL("l.node_id = {}.node_id AND l.key = {}").format(sql.Identifier(alias), p.add(lp.key))
    if lp.value is not None:
        # md5: the label indexes hold md5(value), not the value (migration 010)
        value = p.add(lp.value)
        cond = sql.SQL("{} AND md5(l.value) = md5({}) AND l.value = {}").format(cond, value, value)
    return sql.SQL("{} (SELECT 1 FROM label l WHERE {})").format(sql.SQL("EXISTS" if lp.present else "NOT EXISTS"), cond)


def _from_sources(p: _Params, sources: list[str]) -> sql.Composable:
    """Files described by one of `sources`: by metadata of their own (a yt-dlp video, a
    gallery image) or through the virtual asset right above them (a csv_manifest source's
    media carry nothing themselves; their metadata sits on the post that holds them)."""
    ids = p.add(sources)
    return sql.SQL(
        "(EXISTS (SELECT 1 FROM common_metadata cm WHERE cm.node_id = n.node_id"
        " AND cm.source_id IN (SELECT source_id FROM source WHERE name = ANY({ids})))"
        " OR EXISTS (SELECT 1 FROM edge e JOIN virtual_asset va ON va.node_id = e.parent_id"
        " WHERE e.child_id = n.node_id"
        " AND va.source_id IN (SELECT source_id FROM source WHERE name = ANY({ids}))))").format(ids=ids)


#: the result-column types each op compares (hoardfs.sql.result_tables.TYPES)
_RESULT_OPS = {"eq": {"int", "float", "text", "bool"}, "ne": {"int", "float", "text", "bool"},
               "lt": {"int", "float", "text"}, "le": {"int", "float", "text"}, "gt": {"int", "float", "text"},
               "ge": {"int", "float", "text"}, "in": {"int", "float", "text"}, "contains": {"text"},
               "exists": {"int", "float", "text", "bool", "json", "box"}}


def _value_fits(typ: str, v: object) -> bool:
    if typ in ("int", "float"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typ == "bool":
        return isinstance(v, bool)
    return isinstance(v, str)


def _result(p: _Params, i: int, rp: ResultPredicate, tables: ResultTypes) -> sql.Composable:
    """Nodes with a row in the action's result table whose column passes: the table and the
    column's type from the registry (`tables`), the value checked against that type first."""
    where = f"results[{i}]"
    if rp.action not in tables:
        raise SelectorError(f"selector rejected: {where}.action: action {rp.action!r} has no result table (its "
                            "contract declares no [result_table], or it has not run yet)")
    table, columns = tables[rp.action]
    typ = columns.get(rp.column)
    if typ is None:
        raise SelectorError(f"selector rejected: {where}.column: {table} has no column {rp.column!r}; its columns: "
                            + ", ".join(sorted(columns)))
    if typ not in _RESULT_OPS[rp.op]:
        raise SelectorError(f"selector rejected: {where}.op: {rp.op!r} does not compare {table}.{rp.column}, a "
                            f"{typ} column; ops for it: "
                            + ", ".join(op for op, types in _RESULT_OPS.items() if typ in types))
    col = sql.SQL("r.{}").format(sql.Identifier(rp.column))
    if rp.op == "exists":
        cond = sql.SQL("{} IS NOT NULL").format(col)
    else:
        values = rp.value if isinstance(rp.value, list) else [rp.value]
        if (rp.op == "in") != isinstance(rp.value, list) or not all(_value_fits(typ, v) for v in values):
            raise SelectorError(f"selector rejected: {where}.value: {table}.{rp.column} is a {typ} column; give "
                                + ("a list of " if rp.op == "in" else "") + {"int": "numbers", "float": "numbers",
                                "bool": "true or false", "text": "text"}[typ] + f", not {json.dumps(rp.value)[:60]}")
        if rp.op == "in":
            cond = sql.SQL("{} = ANY({})").format(col, p.add(values))
        elif rp.op == "contains":
            cond = sql.SQL("{} ILIKE '%%' || {} || '%%'").format(col, p.add(rp.value))
        else:
            cond = sql.SQL("{} {} {}").format(col, sql.SQL(OPS[rp.op]), p.add(rp.value))
    return sql.SQL("EXISTS (SELECT 1 FROM {} r WHERE r.node_id = n.node_id AND {})").format(
        sql.Identifier(table), cond)


#: action → (its result table, {column: type}), from the registry (hoardfs.sql.result_tables)
ResultTypes = dict[str, tuple[str, dict[str, str]]]


def compile_selector(sel: Selector, words: str | None = None, ordered: bool = True,
                     result_types: ResultTypes | None = None) -> tuple[sql.Composed, dict[str, object]]:
    """The query and its parameters. `words`: `sel.text` as a tsquery (hoardfs.sql.browse.search_query,
    which needs the database to cut the words as the index did); required when `sel.text` is set.
    `result_types`: the result tables `sel.results` names (`result_types_of`); required when set.
    `ordered=False`: without ORDER BY when nothing depends on it (no LIMIT) — the same rows."""
    p = _Params()
    where: list[sql.Composable] = [sql.SQL("n.is_physical")]
    if not sel.include_black_listed:
        where.append(sql.SQL("NOT pc.in_black_list"))
    lineage = not sel.include_black_listed and not sel.include_blacklisted_lineage
    if lineage:  # an anti-join against the walk, made once (a NOT IN might scan it per row)
        where.append(sql.SQL("NOT EXISTS (SELECT 1 FROM black_lineage bl WHERE bl.node_id = n.node_id)"))
    if not sel.include_deleted:
        where.append(sql.SQL("NOT pc.is_deleted"))
    if sel.sources:
        where.append(_from_sources(p, sel.sources))
    if sel.batches:
        where.append(sql.SQL("EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = n.node_id "
                             "AND bm.batch_id = ANY({}))").format(p.add(sel.batches)))
    if sel.file_types:
        where.append(sql.SQL("pc.file_type = ANY({})").format(p.add(sel.file_types)))
    if sel.kinds:
        where.append(sql.SQL("pc.file_type IN (SELECT ext FROM file_type WHERE kind = ANY({}))").format(p.add(sel.kinds)))
    for fp in sel.metadata:
        col = sql.SQL("cm.{}").format(sql.Identifier(FIELDS[fp.field]))
        if fp.op == "contains":
            cond = sql.SQL("{} ILIKE '%%' || {} || '%%'").format(col, p.add(str(fp.value)))
        elif fp.op == "in":
            if not isinstance(fp.value, list):
                raise SelectorError(f"metadata[{sel.metadata.index(fp)}].value: op 'in' needs a list")
            cond = sql.SQL("{} = ANY({})").format(col, p.add(fp.value))
        else:
            cond = sql.SQL("{} {} {}").format(col, sql.SQL(OPS[fp.op]), p.add(fp.value))
        where.append(sql.SQL("EXISTS (SELECT 1 FROM common_metadata cm WHERE cm.node_id = n.node_id AND {})").format(cond))
    for lp in sel.labels:
        where.append(_label(p, lp, "n"))
    if sel.results and result_types is None:
        raise ValueError("compile_selector: a selector with results needs their tables (result_types_of)")
    for i, rp in enumerate(sel.results):
        where.append(_result(p, i, rp, result_types or {}))
    for t in sel.has_ancestor:
        where.append(_tree(p, t, up=True))
    for t in sel.has_descendant:
        where.append(_tree(p, t, up=False))
    if sel.min_size is not None:
        where.append(sql.SQL("pc.size >= {}").format(p.add(sel.min_size)))
    if sel.max_size is not None:
        where.append(sql.SQL("pc.size <= {}").format(p.add(sel.max_size)))
    if sel.is_root is not None:
        where.append(sql.SQL("EXISTS (SELECT 1 FROM common_metadata cm WHERE cm.node_id = n.node_id "
                             "AND cm.is_root = {})").format(p.add(sel.is_root)))
    if sel.text is not None:
        if words is None:
            raise ValueError("compile_selector: a selector with text needs its words (hoardfs.sql.browse.search_query)")
        # the expression of the metadata_search index (migration 008), as the GUI's search uses it
        where.append(sql.SQL("n.node_id IN (SELECT cm.node_id FROM common_metadata cm WHERE metadata_search_doc("
                             "cm.title, cm.author, cm.user_name, cm.raw_metadata) @@ {}::tsquery)").format(p.add(words)))
    query = sql.SQL("SELECT n.node_id, encode(n.sha256, 'hex'), pc.size FROM node n "
                    "JOIN physical_content pc USING (node_id) WHERE {}").format(sql.SQL(" AND ").join(where))
    if lineage:
        query = sql.SQL("WITH RECURSIVE {} {}").format(_BLACK_LINEAGE, query)
    if ordered or sel.limit is not None:
        query = sql.SQL("{} ORDER BY {}").format(query, sql.SQL(ORDERS[sel.order]))
    if sel.limit is not None:
        query = sql.SQL("{} LIMIT {}").format(query, p.add(sel.limit))
    return query, p.values


def parse_selector(data: dict) -> Selector:
    try:
        return Selector.model_validate(data)
    except ValidationError as e:
        raise SelectorError(f"selector rejected: {describe_validation_error(e, Selector)}") from None


def selector_query(conn: psycopg.Connection, selector: Selector | dict, ordered: bool = True
                   ) -> tuple[sql.Composed, dict[str, object]]:
    """The selector's query (node_id, sha256 hex, size; in its order unless `ordered=False` and
    it has no LIMIT) and parameters, to run or to use as a subquery."""
    sel = selector if isinstance(selector, Selector) else parse_selector(selector)
    words = search_query(conn, sel.text) if sel.text is not None else None
    return compile_selector(sel, words, ordered, result_types_of(conn, sel))


def result_types_of(conn: psycopg.Connection, sel: Selector) -> ResultTypes | None:
    """The result tables (and their columns' types) of the actions `sel.results` names."""
    if not sel.results:
        return None
    out: ResultTypes = {}
    for action in sorted({rp.action for rp in sel.results}):
        got = result_tables.declared(conn, action)
        if got is not None:
            out[action] = (got[0], got[2])
    return out


def query_nodes(conn: psycopg.Connection, selector: Selector | dict) -> NodeSet:
    """The physical nodes the selector picks, with sizes and their total (for quota reservation)."""
    query, params = selector_query(conn, selector)
    rows = conn.execute(query, params).fetchall()
    return NodeSet([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], sum(r[2] for r in rows))


def is_deleted(conn: psycopg.Connection, sha256_hex: str) -> bool:
    """Whether the physical node `sha256_hex` is deleted (type A: hidden, bytes kept)."""
    row = conn.execute("SELECT pc.is_deleted FROM node n JOIN physical_content pc USING (node_id) "
                       "WHERE n.sha256 = %s", [bytes.fromhex(sha256_hex)]).fetchone()
    return bool(row and row[0])


def physical_nodes(conn: psycopg.Connection, shas: list[bytes]) -> list[tuple[str, int, bool]]:
    """(sha256 hex, node_id, deleted or black-listed) of the physical nodes among `shas`
    (a stage or export given --nodes: a listed sha256 that is none of these is refused)."""
    return [(h, node_id, bool(hidden)) for h, node_id, hidden in conn.execute(
        "SELECT encode(n.sha256, 'hex'), n.node_id, pc.in_black_list OR pc.is_deleted "
        "FROM node n JOIN physical_content pc USING (node_id) WHERE n.sha256 = ANY(%b)", [shas]).fetchall()]


#: `marked_nodes`'s walk: the marked nodes' ids off the two partial indexes alone, each arm at
#: most `k` rows (a join with `node` here lets the planner scan either table whole once it
#: expects thousands of marked rows, or marked rows clustered by id — a batch deleted whole)
MARKED_IDS = ("(SELECT node_id FROM physical_content WHERE is_deleted LIMIT %(k)s) UNION "
              "(SELECT node_id FROM physical_content WHERE in_black_list LIMIT %(k)s)")


def marked_nodes(conn: psycopg.Connection, most: int) -> set[bytes] | None:
    """The sha256s of every physical node deleted or black-listed, when there are at most
    `most` of them: their ids read off the two partial indexes (migrations 020 and 022) alone,
    then their sha256s by primary key. None when there are more, or when the schema predates
    migration 022 (the walk would read every physical_content row): `withheld_nodes` asks of
    each sha256 then."""
    index = conn.execute("SELECT to_regclass('physical_content_deleted')").fetchone()
    if index is None or index[0] is None:
        return None
    ids = [r[0] for r in conn.execute(MARKED_IDS, {"k": most + 1})]
    if len(ids) > most:  # (an arm stopped at its limit: more marked than `most`)
        return None
    return {bytes(r[0]) for r in conn.execute("SELECT sha256 FROM node WHERE node_id = ANY(%s)", [ids])}


def withheld_nodes(conn: psycopg.Connection, shas: list[bytes]) -> set[bytes]:
    """The sha256s among `shas` of a physical node deleted or black-listed (the rows of
    `physical_nodes` marked so, without sending every live one back)."""
    return {bytes(r[0]) for r in conn.execute(
        "SELECT DISTINCT n.sha256 FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE n.sha256 = ANY(%b) AND (pc.in_black_list OR pc.is_deleted)", [shas]).fetchall()}


def neighbours(conn: psycopg.Connection, shas: list[bytes], up: bool) -> list[str]:
    """sha256 hex of the physical nodes one edge above (`up`: parents) or below (children) the
    nodes `shas`, leaving out deleted and black-listed ones, as a selector does — what an action
    stages beside its inputs (stage_layout.include_parents / include_children). Virtual nodes
    (a post) have no file and are not among them."""
    near, far = ("child_id", "parent_id") if up else ("parent_id", "child_id")
    return [r[0] for r in conn.execute(
        sql.SQL("SELECT DISTINCT encode(n.sha256, 'hex') FROM node s JOIN edge e ON e.{near} = s.node_id "
                "JOIN node n ON n.node_id = e.{far} JOIN physical_content pc ON pc.node_id = n.node_id "
                "WHERE s.sha256 = ANY(%s) AND NOT pc.in_black_list AND NOT pc.is_deleted ORDER BY 1")
        .format(near=sql.Identifier(near), far=sql.Identifier(far)), [shas]).fetchall()]
