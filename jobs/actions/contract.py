"""ActionContract files: what one S04 process takes, how it is run and what it gives back.

One TOML file per process, `<action_id>.toml` in the actions directory (`actions.dir`,
default `actions/` beside hoard.toml). The file is checked whole before anything uses it:
pydantic refuses an unknown key or a wrong type (naming the key), then `problems` checks
what one key cannot say alone — which keys each type AC1–AC5 needs or forbids, that every
`{placeholder}` of the run spec is known and every `{param:NAME}` is a declared parameter,
that every result file has its mapping, that a worker never runs as root unless the contract
says so. Reading a file is hostile-input safe (`load_file`): a symlink, a directory, a file
over `MAX_BYTES`, bytes that are not UTF-8 and TOML syntax errors are each one line naming
the file. Format, every key and one example per type: docs/actions.md.

Nothing here runs a worker or opens a connection: the selector is checked with the model
`hoard select` uses (hoardfs.sql.selectors), the staging layout with hoardfs.datasets.layouts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from hoardfs.base.config import describe_validation_errors
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import CONTROL, display
from hoardfs.datasets import layouts, stagefiles
from hoardfs.fsd.core import formats
from hoardfs.sql import result_tables
from hoardfs.sql.intents import RESULT_COLUMNS
from hoardfs.sql.selectors import Selector

_strict = ConfigDict(extra="forbid")

#: the largest contract file read (a contract is a page of TOML; a kubectl template a few pages)
MAX_BYTES = 256 << 10
#: the file format this module reads (`format` in the file; the only one so far)
FORMAT: Final = formats.ACTION
#: the built-in actions' contracts (jobs/actions/builtin): listed after the actions directory's
#: files, each shadowed by a file there of the same id
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin" / "contracts"
#: the five types of the design card and what each is, in the database's `action.kind` words
TYPES = {"AC1": "cpu", "AC2": "cpu", "AC3": "gpu", "AC4": "gpu", "AC5": "human"}
#: the placeholders a run spec may use (besides {param:NAME})
PLACEHOLDERS = ("input_root", "output_root", "action_batch_id", "parents_root", "children_root")
#: the placeholders that need a stage_layout key set (their root exists only then)
ROOT_NEEDS = {"parents_root": "include_parents", "children_root": "include_children"}
#: where results may go: "labels" (label rows) or a result table → (its columns a file may
#: fill, those it must fill); node_id and batch_id are the runner's
RESULT_TABLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "labels": (frozenset({"key", "value"}), frozenset({"key"})),
    **RESULT_COLUMNS,  # the result tables, as a write-intent's `results` fill them
}
#: how a parsed file names the node it belongs to: the input's sha256, its staged file name
#: without extension, its staged path (relative to the input root, without extension), or
#: another child by its path in the output root (a child's parent: that path without its
#: extension, as in video → scenes/v1_003.mp4 → frames/v1_003/0001.jpg; a result: the path whole)
#: `name`: its staged file name with extension; `mapping`: an id the worker's mapping file
#: (output_parser.mapping) names the input by
NodeKey = Literal["sha256", "stem", "staged_path", "output_path", "name", "mapping"]
#: where a record's value comes from: a field's name, or a JSON path into the record
#: (`$.mask.score`, `$.boxes[0]`)
FieldRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: `{FIELD}` or `{$.json.path}` of a label template (`{{`/`}}`: the braces themselves)
_TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: a JSON path: `$` then `.name` or `[N]` steps
JSON_PATH = re.compile(r"\$(?:\.[^.\[\]]+|\[[0-9]{1,6}\])+")

ActionId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Relationship = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Text = Annotated[str, StringConstraints(max_length=2000)]
User = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$")]
Seconds = Annotated[int, Field(ge=1, le=7 * 86400)]
_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class ContractError(HoardError):
    """A contract file that cannot be used: one line per problem (exit 2)."""

    exit_code = ExitCode.USAGE

    def __init__(self, lines: list[str]) -> None:
        # a key or a value of the file may hold a newline, an escape sequence or a bidi override:
        # each line stays one line on the terminal (`display`, which leaves shown text as it is)
        lines = [display(line) for line in lines]
        super().__init__("\n".join(lines), ExitCode.USAGE)
        self.lines = lines


# -- the model -------------------------------------------------------------------------------

class Param(BaseModel):
    """A parameter `hoard action run --param NAME=VALUE` sets; `{param:NAME}` in the run spec."""

    model_config = _strict
    type: Literal["str", "int", "float", "bool", "choice"]
    default: str | int | float | bool | None = None
    choices: list[str] = []
    min: float | None = None
    max: float | None = None
    help: Text = ""
    #: a hoard.toml key (`section.key`) whose value is the default, read when the run is made
    #: (so it is part of the run's key); unset there: the parameter must be given
    default_from: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,40}\.[a-z][a-z_]{0,40}$")] | None = None

    @model_validator(mode="after")
    def _fits(self) -> Param:
        if self.default is not None and self.default_from is not None:
            raise ValueError("give `default` or `default_from`, not both")
        if (self.type == "choice") != bool(self.choices):
            raise ValueError("`choices` goes with type = \"choice\" (and only with it): list the allowed values")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("`min`/`max` go only with type = \"int\" or \"float\"")
        d = self.default
        if d is None:
            return self
        ok = {"str": isinstance(d, str), "choice": d in self.choices, "bool": isinstance(d, bool),
              "int": isinstance(d, int) and not isinstance(d, bool),
              "float": isinstance(d, (int, float)) and not isinstance(d, bool)}[self.type]
        if not ok:
            raise ValueError(f"default {d!r} is not a {self.type}"
                             + (f" (one of {', '.join(self.choices)})" if self.type == "choice" else ""))
        if isinstance(d, (int, float)) and not isinstance(d, bool) and (
                (self.min is not None and d < self.min) or (self.max is not None and d > self.max)):
            raise ValueError(f"default {d!r} is outside min..max ({self.min}..{self.max})")
        return self


class StageLayout(stagefiles.StageFiles):
    """How the selected nodes are staged into zone 3C (`<batch>/<layout>/input/…`), and the
    files a worker's folder contract reads beside them (hoardfs.datasets.stagefiles: index
    files, a folder per input, label files, `convert`)."""

    model_config = _strict
    #: a built-in layout of docs/layouts.md (by_sha256, by_batch, by_label, flat) …
    layout: str | None = None
    #: … or a template of docs/layouts.md's fields (e.g. "{source}/{sha256}{ext}")
    template: str | None = None
    sidecars: bool = False
    #: also stage each selected node's parents / children (one edge away, physical, not hidden)
    #: into `<layout>/parents/`, `<layout>/children/`: {parents_root}, {children_root}
    include_parents: bool = False
    include_children: bool = False

    @model_validator(mode="after")
    def _one_layout(self) -> StageLayout:
        if (self.layout is None) == (self.template is None):
            raise ValueError("give one of `layout` (a built-in: " + ", ".join(layouts.BUILTIN)
                             + ") or `template` (docs/layouts.md)")
        if self.layout is not None and self.layout not in layouts.BUILTIN:
            raise ValueError(f"layout {self.layout!r} is not a built-in layout; use one of "
                             f"{', '.join(layouts.BUILTIN)} or write a `template` (docs/layouts.md)")
        try:
            lay = layouts.parse(self.template, "stage", sidecars=self.sidecars) if self.template is not None \
                else layouts.load(str(self.layout))
        except layouts.LayoutError as e:
            raise ValueError(e.message.removeprefix("layout stage: ")) from None
        lit = stagefiles.literal_ext(lay)
        if self.convert and lit is not None and lit != self.convert:
            raise ValueError(f"the template ends in .{lit} but convert = {self.convert!r}: end it in "
                             f".{self.convert} or {{ext}}")
        for name, staged, key in (("parents", self.include_parents or self.parent_template is not None,
                                   "include_parents = true or a parent_template"),
                                  ("parent", self.include_parents or self.parent_template is not None,
                                   "include_parents = true or a parent_template"),
                                  ("children", self.include_children, "include_children = true")):
            if self.uses(name) and not staged:
                raise ValueError(f"an index names {{{name}}} but no {name} are staged: add {key}")
        return self


class _Worker(BaseModel):
    """What every run spec that starts a process has."""

    model_config = _strict
    #: the user the worker runs as (a name or a uid); none: the unprivileged `hoard` user the
    #: job runs under. Never root unless `allow_root = true`.
    run_as: User | None = None
    allow_root: bool = False
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")], Text] = {}
    timeout_s: Seconds = 3600

    @model_validator(mode="after")
    def _not_root(self) -> _Worker:
        if self.run_as in ("root", "0") and not self.allow_root:
            raise ValueError("the worker would run as root: name an unprivileged user in `run_as`, or set "
                             "`allow_root = true` if it really must")
        return self


#: an absolute path without control characters (a rule names it as it is)
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[^\x00-\x1f\x7f]{0,1023}$")]


class RunLocal(_Worker):
    """A command on this host: argv (no shell), each item may hold placeholders."""

    kind: Literal["local"]
    command: list[Text] = Field(min_length=1)
    #: the worker runs confined (Landlock and seccomp, as the built-ins: docs/actions.md,
    #: "Confinement"): it writes only below its output root and its own TMPDIR, reads only its
    #: roots, the system, its program and `read`. false: it runs unconfined, as its user may —
    #: also where the kernel cannot confine, which otherwise refuses the run
    confine: bool = True
    #: it may open IPv4 and IPv6 sockets (false: no socket but a connected pair); its files stay
    #: confined either way
    network: bool = False
    #: more it may read and run programs from (its model weights, its own code tree)
    read: list[AbsPath] = []
    #: it may also write /dev/shm: POSIX shared memory and semaphores (Python's multiprocessing
    #: locks, queues and pools; a PyTorch DataLoader with workers) — a directory every user shares
    shared_memory: bool = False


class RunDocker(_Worker):
    """`docker run` of `image`: input_root mounted read-only, output_root read-write."""

    kind: Literal["docker"]
    image: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")]
    args: list[Text] = []
    gpus: bool = False
    #: the container's network (`docker run --network`): "none" (the default) — no interface but
    #: loopback, the worker reads its input and writes its output and reaches nothing else; or the
    #: name of a docker network ("bridge", a team's own) for a worker that must reach a service
    network: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] = "none"


class RunKubectl(_Worker):
    """`kubectl apply` of a Job manifest `template` (YAML with placeholders); done when the Job is."""

    kind: Literal["kubectl"]
    template: Annotated[str, StringConstraints(min_length=1, max_length=64 << 10)]
    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")] | None = None


class RunExternal(BaseModel):
    """A worker on another machine: it reads the staged input, writes the output and then
    `done_marker` in the output root; the run waits for it up to `timeout_s`."""

    model_config = _strict
    kind: Literal["external"]
    done_marker: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")] = "_DONE"
    timeout_s: Seconds
    #: what the person who starts the remote worker is told (may hold placeholders)
    instructions: Text = ""


class RunLabelStudio(BaseModel):
    """AC5: tasks exported to Label Studio, finished annotations imported back."""

    model_config = _strict
    kind: Literal["label_studio"]
    #: the project's labelling interface (Label Studio's XML config)
    label_config: Annotated[str, StringConstraints(min_length=1, max_length=64 << 10)]
    project_title: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    #: tasks per import request (Label Studio's large imports time out)
    tasks_per_import: int = Field(default=1000, ge=1, le=1000)
    timeout_s: Seconds = 7 * 86400


RunSpec = Annotated[RunLocal | RunDocker | RunKubectl | RunExternal | RunLabelStudio, Field(discriminator="kind")]


def _relative_glob(value: str) -> str | None:
    """Why a glob cannot be a pattern inside the output root (None: it can)."""
    if not value or value.startswith("/"):
        return "must be a relative pattern inside the output root (e.g. \"*.png\", \"edges/**/*.png\")"
    if CONTROL.search(value) or "\\" in value:
        return "holds a control character or a backslash"
    if any(seg in ("", ".", "..") for seg in value.split("/")):
        return "has an empty, '.' or '..' part: it must stay inside the output root"
    return None


class ChildFiles(BaseModel):
    """Output files that become child nodes of an input."""

    model_config = _strict
    glob: Text
    #: a regular expression the file's path (relative to the output root) must match whole;
    #: its group `input` names the parent as `parent_key` says. The default: the file's name
    #: up to its first `_` or its extension, in any directory (`thumbs/cat_256.jpg` → `cat`)
    parent_match: Text = r"(?:[^/]+/)*(?P<input>[^/]+?)(_[^/]*)?\.[^/.]+"
    #: how that group names the parent: also `mapping`, an id of output_parser.mapping
    parent_key: NodeKey = "stem"
    relationship: Relationship = "derived_from"
    #: labels every child gets
    labels: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], Text] = {}

    @model_validator(mode="after")
    def _patterns(self) -> ChildFiles:
        why = _relative_glob(self.glob)
        if why:
            raise ValueError(f"glob {self.glob!r} {why}")
        try:
            rx = re.compile(self.parent_match)
        except re.error as e:
            raise ValueError(f"parent_match is not a regular expression: {e}") from None
        if "input" not in rx.groupindex:
            raise ValueError("parent_match needs a group (?P<input>…) naming the parent input")
        return self


class LabelValue(BaseModel):
    model_config = _strict
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    value: Text = ""


class ResultFiles(BaseModel):
    """Output files of per-node results (one record per row/object); `result_mapping.<name>`
    says where they go."""

    model_config = _strict
    name: ParamName
    glob: Text
    format: Literal["json", "jsonl", "csv"]
    #: the record's field naming its node, and how it names it (`output_path`: a child by its
    #: path in the output root)
    node_field: FieldRef = "file"
    node_key: NodeKey = "stem"

    @model_validator(mode="after")
    def _pattern(self) -> ResultFiles:
        why = _relative_glob(self.glob)
        if why:
            raise ValueError(f"glob {self.glob!r} {why}")
        return self


class MappingFile(BaseModel):
    """A file the worker writes naming, for each of its own ids (`id_field`), the input it
    belongs to (`input_field`, by `input_key`): `node_key` / `parent_key` = "mapping" look ids
    up here."""

    model_config = _strict
    glob: Text
    format: Literal["json", "jsonl", "csv"] = "csv"
    id_field: FieldRef = "id"
    input_field: FieldRef = "input"
    input_key: Literal["sha256", "stem", "staged_path", "name"] = "name"

    @model_validator(mode="after")
    def _pattern(self) -> MappingFile:
        why = _relative_glob(self.glob)
        if why:
            raise ValueError(f"glob {self.glob!r} {why}")
        return self


class OutputParser(BaseModel):
    """What the worker's output root holds and how it is read back."""

    model_config = _strict
    children: list[ChildFiles] = []
    results: list[ResultFiles] = []
    mapping: MappingFile | None = None
    #: an output file that no rule matches: refuse the run ("error") or leave it ("ignore")
    unmatched: Literal["error", "ignore"] = "error"


class ResultMapping(BaseModel):
    """Where one `output_parser.results` rule's records go: `into` a result table or labels,
    `columns` = {column: the record's field}."""

    model_config = _strict
    #: "result_table": the action's own table, as [result_table] declares it
    into: Literal["labels", "result_table", "result_canny", "result_ocr_box", "result_image_hash",
                  "result_image_embedding"]
    columns: dict[str, FieldRef] = {}
    #: labels each record gives its node: constant or templated keys and values
    #: (`{key = "mask_score", value = "{score}"}`; `{FIELD}` or `{$.json.path}`)
    labels: list[LabelValue] = []


class ResultTable(BaseModel):
    """The action's own result table `result_<action>`: column → type. hoardfs creates it and
    migrates it with the contract's version (hoardfs.sql.result_tables)."""

    model_config = _strict
    columns: dict[str, Literal["int", "float", "text", "bool", "json", "box"]] = Field(
        min_length=1, max_length=result_tables.MAX_COLUMNS)

    @model_validator(mode="after")
    def _names(self) -> ResultTable:
        for name in self.columns:
            why = result_tables.column_problem(name)
            if why:
                raise ValueError(f"column {name!r} {why}")
        return self


class Rule(BaseModel):
    """AC1: the input nodes that also match `where` get `label`, or are black-listed."""

    model_config = _strict
    where: Selector = Selector()
    label: LabelValue | None = None
    black_list: bool = False

    @model_validator(mode="after")
    def _one_effect(self) -> Rule:
        if (self.label is not None) == self.black_list:
            raise ValueError("a rule does one thing: give `label = {key = \"…\", value = \"…\"}` or "
                             "`black_list = true`")
        return self


class Gate(BaseModel):
    """AC3/AC4: the run waits (holding no worker) until released by hand, or until `hook`
    (polled every `poll_s`) exits 0; refused after `timeout_s`."""

    model_config = _strict
    hook: list[Text] = []
    poll_s: int = Field(default=30, ge=5, le=3600)
    timeout_s: Seconds = 3600


class Contract(BaseModel):
    """One ActionContract file (docs/actions.md)."""

    model_config = _strict
    format: Literal["hoardfs-action-1"] = FORMAT
    action_id: ActionId
    action_type: Literal["AC1", "AC2", "AC3", "AC4", "AC5"]
    version: int = Field(ge=1)
    description: Text = ""
    input_selector: Selector
    stage_layout: StageLayout | None = None
    run_spec: RunSpec | None = None
    params: dict[ParamName, Param] = {}
    output_parser: OutputParser | None = None
    result_mapping: dict[ParamName, ResultMapping] = {}
    #: the action's own typed result table (`result_<action>`)
    result_table: ResultTable | None = None
    rules: list[Rule] = []
    gate: Gate | None = None
    retries: int = Field(default=0, ge=0, le=10)
    a4_scale: int | None = Field(default=None, ge=1, le=100_000)
    #: the most bytes the run's children may hold together (default: actions.max_output_bytes)
    max_output_bytes: int | None = Field(default=None, ge=1, le=1 << 60)


# -- what one key cannot say ------------------------------------------------------------------

def _strings(c: Contract) -> Iterator[tuple[str, str]]:
    """(key, text) of every run-spec string that may hold placeholders."""
    rs = c.run_spec
    if isinstance(rs, RunLocal):
        yield from ((f"run_spec.command[{i}]", s) for i, s in enumerate(rs.command))
    if isinstance(rs, RunDocker):
        yield from ((f"run_spec.args[{i}]", s) for i, s in enumerate(rs.args))
    if isinstance(rs, RunKubectl):
        yield "run_spec.template", rs.template
    if isinstance(rs, RunExternal):
        yield "run_spec.instructions", rs.instructions
    if isinstance(rs, (RunLocal, RunDocker, RunKubectl)):
        yield from ((f"run_spec.env.{k}", v) for k, v in rs.env.items())
    if c.gate is not None:
        yield from ((f"gate.hook[{i}]", s) for i, s in enumerate(c.gate.hook))


def _placeholder_problems(c: Contract) -> Iterator[str]:
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    for key, text in _strings(c):
        for m in _PART.finditer(text):
            part = m.group(0)
            if part in ("{", "}"):
                yield f"{key}: an unmatched {part!r} in {display(text)!r}; write {part * 2} for the character itself"
            elif m.group(1) is None:
                continue
            elif m.group(1).startswith("param:"):
                name = m.group(1).removeprefix("param:")
                if name not in c.params:
                    yield (f"{key}: {{param:{name}}} is not a declared parameter; declare it under "
                           f"[params.{name}] or remove it" + (f" (declared: {', '.join(c.params)})" if c.params else ""))
            elif m.group(1) not in PLACEHOLDERS:
                yield f"{key}: unknown placeholder {{{display(m.group(1))}}}; known: {known}, {{param:NAME}}"
            elif m.group(1) in ROOT_NEEDS and not getattr(c.stage_layout, ROOT_NEEDS[m.group(1)], False):
                yield (f"{key}: {{{m.group(1)}}} is staged only with stage_layout.{ROOT_NEEDS[m.group(1)]} = true; "
                       "set it, or remove the placeholder")


def _docker_problems(c: Contract) -> Iterator[str]:
    rs = c.run_spec
    if isinstance(rs, RunDocker) and not rs.allow_root:
        for i, a in enumerate(rs.args):
            if a in ("--privileged", "--user", "-u") or a.startswith(("--privileged=", "--user=", "--cap-add")):
                yield (f"run_spec.args[{i}]: {a!r} is not allowed: the user is `run_as`, and a privileged "
                       "container is root on the host (set `allow_root = true` if it really must)")
        if rs.network == "host":
            yield ("run_spec.network: 'host' shares this host's network (its localhost services: PostgreSQL, "
                   "Redis) with the container; name a docker network (\"bridge\" or your own), or set "
                   "`allow_root = true` if it really must")


def _field_problem(ref: str) -> str | None:
    if ref.startswith("$") and not JSON_PATH.fullmatch(ref):
        return (f"{ref!r} is not a JSON path: `$` then `.name` or `[N]` steps (e.g. \"$.mask.score\"); a field "
                "whose name starts with $ cannot be read")
    return None


def _mapping_problems(c: Contract, name: str, m: ResultMapping) -> Iterator[str]:
    where = f"result_mapping.{name}"
    if m.into == "result_table":
        if c.result_table is None:
            yield f"{where}.into: \"result_table\" needs [result_table] declaring the columns and their types"
            return
        allowed, required = frozenset(c.result_table.columns), frozenset[str]()
    else:
        allowed, required = RESULT_TABLES[m.into]
    if m.into == "labels" and m.labels:
        required = frozenset()  # the labels come from the templates; columns may add key/value
    if not m.columns and not (m.into == "labels" and m.labels):
        yield f"{where}.columns: map at least one column from a field (or, into labels, give `labels`)"
    for col in sorted(set(m.columns) - allowed):
        yield (f"{where}.columns.{col}: {table_of(c, m.into)} has no column {col!r}; its columns: "
               f"{', '.join(sorted(allowed))}")
    for col in sorted(required - set(m.columns)):
        yield f"{where}.columns: {m.into} needs column {col!r}; map it from a field"
    for col, ref in sorted(m.columns.items()):
        why = _field_problem(ref)
        if why:
            yield f"{where}.columns.{col}: {why}"
    for i, lv in enumerate(m.labels):
        for part, text in (("key", lv.key), ("value", lv.value)):
            for tm in _TEMPLATE_PART.finditer(text):
                if tm.group(0) in ("{", "}"):
                    yield (f"{where}.labels[{i}].{part}: an unmatched {tm.group(0)!r} in {display(text)!r}; write "
                           f"{tm.group(0) * 2} for the character itself")
                elif tm.group(1) is not None:
                    why = "is empty" if not tm.group(1) else _field_problem(tm.group(1))
                    if why:
                        yield f"{where}.labels[{i}].{part}: {{{display(tm.group(1))}}} {why}"


def table_of(c: Contract, into: str) -> str:
    """The table a mapping's `into` names: "result_table" is the action's own `result_<action>`."""
    return result_tables.table_name(c.action_id) if into == "result_table" else into


def problems(c: Contract) -> list[str]:
    """Each thing wrong with a contract that validated key by key, as `key: what to fix`."""
    out: list[str] = []
    t = c.action_type
    kind = c.run_spec.kind if c.run_spec is not None else None
    if t == "AC1":
        for key in ("stage_layout", "run_spec", "output_parser", "gate", "a4_scale", "max_output_bytes"):
            if getattr(c, key) is not None:
                out.append(f"{key}: an AC1 action is SQL only (nothing is staged or run); remove {key}")
        if c.result_mapping:
            out.append("result_mapping: an AC1 action writes through its `rules`; remove result_mapping")
        if not c.rules:
            out.append("rules: an AC1 action needs at least one [[rules]] (a label or black_list = true)")
    else:
        if c.rules:
            out.append(f"rules: only AC1 actions have rules; an {t} action's results come from output_parser")
        if c.stage_layout is None:
            out.append(f"stage_layout: an {t} action stages its inputs into 3C; add [stage_layout] with a layout")
        if c.run_spec is None:
            out.append(f"run_spec: an {t} action needs [run_spec] (kind = "
                       + ("\"label_studio\")" if t == "AC5" else "\"local\", \"docker\", \"kubectl\" or \"external\")"))
        elif t == "AC5" and kind != "label_studio":
            out.append(f"run_spec.kind: an AC5 action is human labelling: kind = \"label_studio\" (got {kind!r})")
        elif t != "AC5" and kind == "label_studio":
            out.append(f"run_spec.kind: \"label_studio\" is for AC5 actions; this one is {t}")
        if t != "AC5" and c.output_parser is None:
            out.append(f"output_parser: an {t} action must say which output files it reads; add [output_parser]")
    if c.gate is not None and t not in ("AC3", "AC4"):
        out.append(f"gate: only GPU actions (AC3, AC4) wait at a gate; this one is {t}")
    children = bool(c.output_parser and c.output_parser.children)
    if c.a4_scale is not None and not children:
        out.append("a4_scale: this action declares no children (output_parser.children); remove a4_scale")
    if c.max_output_bytes is not None and not children and t != "AC1":
        out.append("max_output_bytes: this action declares no children (output_parser.children); remove "
                   "max_output_bytes")
    results = {r.name for r in c.output_parser.results} if c.output_parser else set()
    names = [r.name for r in c.output_parser.results] if c.output_parser else []
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"output_parser.results: the name {dup!r} is used twice; give each rule its own name")
    for name in sorted(results - set(c.result_mapping)):
        out.append(f"result_mapping.{name}: missing: say where the records of output_parser.results {name!r} go "
                   "(into = \"labels\" or a result table)")
    for name, m in sorted(c.result_mapping.items()):
        if name not in results:
            out.append(f"result_mapping.{name}: no output_parser.results rule is named {name!r}"
                       + (f" (named: {', '.join(sorted(results))})" if results else ""))
        out.extend(_mapping_problems(c, name, m))
    own = any(m.into == "result_table" for m in c.result_mapping.values())
    if c.result_table is not None and not own:
        out.append("result_table: no result_mapping writes into it; add one with into = \"result_table\", or remove "
                   "[result_table]")
    mapped = c.output_parser is not None and c.output_parser.mapping is not None
    keys = [(f"output_parser.results[{i}].node_key", r.node_key) for i, r in enumerate(c.output_parser.results)] \
        if c.output_parser else []
    keys += [(f"output_parser.children[{i}].parent_key", ch.parent_key) for i, ch in enumerate(c.output_parser.children)] \
        if c.output_parser else []
    for key, how in keys:
        if how == "mapping" and not mapped:
            out.append(f"{key}: \"mapping\" needs [output_parser.mapping] (the file naming each id's input)")
    out.extend(_placeholder_problems(c))
    out.extend(_docker_problems(c))
    return out


# -- files ------------------------------------------------------------------------------------

_KINDS: dict[str, type[BaseModel]] = {"local": RunLocal, "docker": RunDocker, "kubectl": RunKubectl, "external": RunExternal,
          "label_studio": RunLabelStudio}


def _described(e: ValidationError) -> list[str]:
    """describe_validation_errors' lines, with the run spec's kind (pydantic puts the union's
    tag in the key: `run_spec.docker.image`) taken out of the key and its own keys named."""
    lines = describe_validation_errors(e, Contract)
    out = []
    kinds = ", ".join(f'"{k}"' for k in _KINDS)
    for err, line in zip(e.errors(include_url=False), lines, strict=True):
        loc = err["loc"]
        if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            got = err["ctx"].get("tag") if err["type"] == "union_tag_invalid" else None
            where = _dotted_key(loc)
            out.append(f"{where}.kind: " + (f"{got!r} is not a kind" if got else "required key is missing")
                       + f"; kind is one of {kinds}")
            continue
        line = line.replace(".[key]:", " (the name):")
        if len(loc) >= 2 and loc[0] == "run_spec" and loc[1] in _KINDS:
            model = _KINDS[str(loc[1])]
            line = line.replace(f"run_spec.{loc[1]}", "run_spec", 1)
            if err["type"] == "extra_forbidden":
                line = line.split("; allowed here:")[0] + "; allowed here: " + ", ".join(model.model_fields)
        out.append(line)
    return out


def _dotted_key(loc: tuple) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def parse(doc: dict, where: str) -> Contract:
    """A Contract from a parsed TOML document, or ContractError with one `where: key: …` line
    per problem."""
    try:
        c = Contract.model_validate(doc)
    except ValidationError as e:
        raise ContractError([f"{where}: {line}" for line in _described(e)]) from None
    found = problems(c)
    if found:
        raise ContractError([f"{where}: {line}" for line in found])
    return c


def read_text(path: Path) -> str:
    """A contract file's text: a regular file (not a symlink) of at most MAX_BYTES, UTF-8."""
    name = display(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContractError([f"{name}: no such file"]) from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise ContractError([f"{name}: is a symbolic link; put the contract file itself here"]) from None
        raise ContractError([f"{name}: cannot read: {e.strerror}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ContractError([f"{name}: not a regular file (a directory, a device or a pipe); a contract is a "
                                 ".toml file"])
        if st.st_size > MAX_BYTES:
            raise ContractError([f"{name}: {st.st_size} bytes, more than a contract may hold ({MAX_BYTES >> 10} KiB)"])
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ContractError([f"{name}: cannot read: {e.strerror}"]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ContractError([f"{name}: more than a contract may hold ({MAX_BYTES >> 10} KiB)"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ContractError([f"{name}: not UTF-8 text (byte {e.start}); save it as UTF-8"]) from None


def load_file(path: Path) -> Contract:
    """The contract in `path`, or ContractError (one line per problem, each naming the file)."""
    name = display(str(path))
    text = read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ContractError([f"{name}: not valid TOML: {e}"]) from None
    c = parse(doc, name)
    if path.suffix != ".toml" or path.stem != c.action_id:
        raise ContractError([f"{name}: action_id is {c.action_id!r}: name the file {c.action_id}.toml "
                             "(one file per action, named by its id)"])
    return c


@dataclass(frozen=True)
class Entry:
    """One `*.toml` of the actions directory: its contract, or the first of its problems
    (without the file's name) and how many there are."""

    path: Path
    contract: Contract | None
    error: str | None
    problems: int = 0
    #: one of the built-in contracts (BUILTIN_DIR), not a file of the actions directory
    builtin: bool = False


def list_dir(directory: Path) -> list[Entry]:
    """Every `*.toml` in `directory`, by name; a missing directory holds none."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise HoardError(f"actions directory {display(str(directory))} is not a directory; fix actions.dir "
                         "in hoard.toml", ExitCode.USAGE) from None
    except OSError as e:
        raise HoardError(f"cannot read the actions directory {display(str(directory))}: {e.strerror}",
                         ExitCode.USAGE) from None
    out = []
    for n in names:
        path = directory / n
        try:
            out.append(Entry(path, load_file(path), None))
        except ContractError as e:
            out.append(Entry(path, None, e.lines[0].removeprefix(f"{display(str(path))}: "), len(e.lines)))
    return out


def find(directory: Path, name: str) -> Path:
    """The file of action `name` in `directory` (ContractError if `name` is no action id or
    has no file)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
        raise ContractError([f"{display(name)!r} is not an action id (a-z 0-9 _ -, starting with a letter); "
                             "`hoard action list` shows them"])
    path = directory / f"{name}.toml"
    if not os.path.lexists(path):
        raise ContractError([f"no action {name!r} in {display(str(directory))} (no {name}.toml); "
                             "`hoard action list` shows the actions"])
    return path


def list_all(directory: Path, builtin_dir: Path = BUILTIN_DIR) -> list[Entry]:
    """The actions directory's contracts (`list_dir`), then each built-in whose id no file
    there has (a file of the directory, valid or not, shadows the built-in of its name)."""
    own = list_dir(directory)
    names = {e.path.name for e in own}
    return own + [replace(e, builtin=True) for e in list_dir(builtin_dir) if e.path.name not in names]


def find_any(directory: Path, name: str, builtin_dir: Path = BUILTIN_DIR) -> tuple[Path, bool]:
    """(the file of action `name`, whether it is a built-in): the actions directory's file
    first, else the built-in of that id; ContractError if neither has it."""
    try:
        return find(directory, name), False
    except ContractError:
        if not (builtin_dir / f"{name}.toml").is_file() or not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
            raise
    return builtin_dir / f"{name}.toml", True


def summary(c: Contract) -> dict:
    """What `hoard action list --json` shows of a contract."""
    return {"action_id": c.action_id, "action_type": c.action_type, "kind": TYPES[c.action_type],
            "version": c.version, "run": c.run_spec.kind if c.run_spec is not None else "sql"}


def show_rows(c: Contract, path: Path, builtin: bool = False) -> list[tuple[str, str]]:
    """What `hoard action show NAME` prints of a contract (and the GUI's Actions page shows):
    (key, value) rows; the values are the contract's own text — show them as text."""
    rows = [("action_id", c.action_id), ("action_type", f"{c.action_type} ({TYPES[c.action_type]})"),
            ("version", str(c.version)), ("file", f"builtin ({path})" if builtin else str(path))]
    if c.description:
        rows.append(("description", c.description))
    rows.append(("selector", json.dumps(c.input_selector.model_dump(mode="json", exclude_defaults=True),
                                        ensure_ascii=False)))
    for r in c.rules:
        effect = "black-list" if r.black_list else f"label {r.label.key}={r.label.value}" if r.label else "?"
        rows.append(("rule", f"{effect} where {json.dumps(r.where.model_dump(mode='json', exclude_defaults=True))}"))
    if c.stage_layout is not None:
        s = c.stage_layout
        extra = [k for k in ("sidecars", "include_parents", "include_children") if getattr(s, k)]
        rows.append(("stage", (f"layout {s.layout}" if s.layout else f"template {s.template}")
                     + (f" (+ {', '.join(extra)})" if extra else "")))
        made = ([f"convert to {s.convert}"] if s.convert else []) + \
            [f"{k.removesuffix('_template')} {getattr(s, k)}" for k in ("parent_template", "meta_template")
             if getattr(s, k)] + [f"index {ix.path} ({ix.format})" for ix in s.index] + \
            [f"labels {lf.path} ({lf.format})" for lf in s.labels]
        if made:
            rows.append(("stage files", ", ".join(made)))
    rs = c.run_spec
    if isinstance(rs, RunLocal):
        rows.append(("run", f"local: {' '.join(rs.command)}"))
        rows.append(("confined", ("no (confine = false)" if not rs.confine else
                                  "yes: " + ("network allowed" if rs.network else "no network")
                                  + (", writes /dev/shm" if rs.shared_memory else "")
                                  + (f", also reads {', '.join(rs.read)}" if rs.read else ""))))
    elif isinstance(rs, RunDocker):
        rows.append(("run", f"docker: {rs.image} {' '.join(rs.args)}" + (" (gpus)" if rs.gpus else "")))
    elif isinstance(rs, RunKubectl):
        rows.append(("run", f"kubectl: a Job template of {len(rs.template.splitlines())} lines"
                     + (f" in namespace {rs.namespace}" if rs.namespace else "")))
    elif isinstance(rs, RunExternal):
        rows.append(("run", f"external: waits for {rs.done_marker} up to {rs.timeout_s} s"))
    elif isinstance(rs, RunLabelStudio):
        rows.append(("run", f"label_studio: {rs.project_title or c.action_id}, {rs.tasks_per_import} tasks per import"))
    if isinstance(rs, (RunLocal, RunDocker, RunKubectl)):
        rows.append(("run_as", rs.run_as or "(the job's user)"))
    if rs is not None:
        rows.append(("timeout", f"{rs.timeout_s} s, {c.retries} retr{'y' if c.retries == 1 else 'ies'}"))
    for name, p in c.params.items():
        lo, hi = ("" if v is None else f"{v:g}" for v in (p.min, p.max))
        bounds = f" ({lo}..{hi})" if lo or hi else ""
        choices = f" one of {', '.join(p.choices)}" if p.choices else ""
        default = "required" if p.default is None else f"= {p.default!r}"
        rows.append(("param", f"{name}: {p.type}{choices} {default}{bounds}"))
    if c.gate is not None:
        rows.append(("gate", (f"hook {' '.join(c.gate.hook)} every {c.gate.poll_s} s" if c.gate.hook else
                              "released by hand") + f", timeout {c.gate.timeout_s} s"))
    if c.output_parser is not None:
        for ch in c.output_parser.children:
            parent = "another child (output_path)" if ch.parent_key == "output_path" else f"the input ({ch.parent_key})"
            rows.append(("children", f"{ch.glob} → child of {parent}, {ch.relationship}"))
        for res in c.output_parser.results:
            m = c.result_mapping[res.name]
            rows.append(("results", f"{res.name}: {res.glob} ({res.format}) → {m.into}"))
    if c.result_table is not None:
        rows.append(("result_table", f"{result_tables.table_name(c.action_id)}: "
                     + ", ".join(f"{k} {t}" for k, t in c.result_table.columns.items())))
    if c.a4_scale is not None:
        rows.append(("a4_scale", str(c.a4_scale)))
    return rows
