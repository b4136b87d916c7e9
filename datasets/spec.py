"""A dataset spec (TOML): what `hoard dataset build SPEC` makes, checked whole before anything
is read from the database — unknown keys refused, one line per problem (docs/datasets.md).

    name = "pets"
    layout = "imagefolder"
    class_label = "class"
    classes = ["cat", "dog"]
    [selector]                     # as `hoard select --file` takes it (docs/selectors.md)
    kinds = ["image"]
    [split]
    ratios = { train = 0.8, val = 0.2 }
    salt = "v1"
    group = "post"
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from hoardfs.base.config import describe_validation_error
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.datasets.card import canonical
from hoardfs.sql.neardup import DEFAULT_THRESHOLD, MAX_THRESHOLD

#: a dataset's name: an output id of zone 3D once `-v<N>` is added (jobs/outputs.OUTPUT_ID) and
#: an RQ job id once `dataset-` is (hoardfs.jobs.datasets.submit: RQ takes letters, digits, `_` and `-` only)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,119}")
_strict = ConfigDict(extra="forbid")


class DatasetError(HoardError):
    exit_code = ExitCode.USAGE


class SplitSpec(BaseModel):
    model_config = _strict
    #: split name → its share; in the order written (the hash thresholds follow it)
    ratios: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")], float]
    salt: str = ""
    #: the group that never straddles splits (docs/datasets.md "Groups"): post (the sample's
    #: nearest scraped item) | author | thread | channel | lineage (an image with its derived
    #: children and parents) | near_dup (the near-duplicate groups of `hoard dups` at the spec's
    #: near_dup_threshold, nothing else joined) | none (each sample alone; `node` says the same) |
    #: root (the ancestor with the lowest node id) | label:KEY
    group: Annotated[str, StringConstraints(
        pattern=r"^(post|author|thread|channel|lineage|near_dup|none|node|root|label:.{1,200})$")] = "post"
    #: build even when a split is empty or off its ratio by more than the tolerance
    allow_skew: bool = False
    #: a group holding more than this share of the samples is reported (dry run, build, card)
    max_group_share: float = Field(default=0.1, gt=0, le=1)
    #: a label key whose value names the split (explicit splits), instead of the hash
    field: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one split, e.g. { train = 0.8, val = 0.2 }")
        bad = [k for k, r in v.items() if not (0 < r <= 1) or not math.isfinite(r)]
        if bad:
            raise ValueError(f"split {bad[0]!r} has ratio {v[bad[0]]}; each ratio is > 0 and ≤ 1")
        total = sum(v.values())
        if abs(total - 1) > 1e-9:
            raise ValueError(f"the ratios sum to {total:g}, not 1 ({', '.join(f'{k} = {r:g}' for k, r in v.items())})"
                             "; make them add up to 1")
        return v


class AuditSpec(BaseModel):
    """The leak audit every build runs (docs/datasets.md "The leak audit"): cross-split pairs
    of samples that share a lineage, are near-duplicates at `near_dup_threshold`, or whose
    embeddings lie within `cosine`."""
    model_config = _strict
    #: two samples whose image embeddings' cosine similarity is at least this are a leak
    cosine: float = Field(default=0.95, gt=0, le=1)
    #: a build whose audit finds a pair: refused (nothing written) or built with a warning
    on_leak: Literal["refuse", "warn"] = "refuse"


class WebDatasetSpec(BaseModel):
    model_config = _strict
    shard_bytes: int = Field(default=256 << 20, ge=1 << 10)
    shard_samples: int | None = Field(default=None, ge=1)


class TemplateSpec(BaseModel):
    """A layout template (docs/layouts.md) as the spec records it: what a layout file (or a
    built-in template) said when the dataset was built, so a version is materialized without
    the file."""
    model_config = _strict
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    template: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    sidecars: bool = False
    case_sensitive: bool = False


class DatasetSpec(BaseModel):
    model_config = _strict
    name: str
    layout: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    mode: Literal["copy", "view"] = "copy"
    class_label: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    classes: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = None
    allow_new_classes: bool = False
    selector: dict[str, Any] = {}
    split: SplitSpec = SplitSpec(ratios={"train": 1.0})
    dedup: Literal["by_sha256", "by_node", "by_near_dup"] = "by_sha256"
    #: the Hamming distance near-duplicate groups are made at (split.group = "near_dup",
    #: dedup = "by_near_dup"): as `hoard dups --threshold`
    near_dup_threshold: int = Field(default=DEFAULT_THRESHOLD, ge=0, le=MAX_THRESHOLD)
    #: class → at most this many samples per split
    caps: dict[str, Annotated[int, Field(ge=1)]] | None = None
    #: every class: at most this many samples per split
    max_per_class: int | None = Field(default=None, ge=1)
    #: a label key holding boxes/polygons (Label Studio regions, e.g. "ls:box") or "result_ocr_box"
    annotations: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    webdataset: WebDatasetSpec = WebDatasetSpec()
    #: layout voc: a sample that is not a JPEG is converted at build (false: refused, naming it)
    convert: bool = True
    #: the quality of the JPEGs a conversion writes (Pillow's scale, 1-100)
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    #: keep the nodes derived from a black-listed one (the selector's `include_blacklisted_lineage`)
    include_blacklisted_lineage: bool = False
    audit: AuditSpec = AuditSpec()
    #: the template of a layout file or built-in template, recorded at build time (hoardfs.datasets.api
    #: fills it in; written in the spec, it is used instead of reading `layout`)
    template: TemplateSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError("1-120 of A-Z a-z 0-9 _ - starting with a letter or digit (the output is 3D/<name>-v<N>)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if self.classes is not None:
            if not self.classes:
                raise ValueError("classes: an empty list; leave it out to freeze the classes found at the first build")
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dup:
                raise ValueError(f"classes: {dup[0]!r} is listed twice")
            if self.class_label is None:
                raise ValueError("classes are given but no class_label names the label that holds them")
        unknown = sorted(set(self.caps or {}) - set(self.classes or self.caps or {}))
        if self.classes is not None and unknown:
            raise ValueError(f"caps: {unknown[0]!r} is not one of the classes")
        return self

    def doc(self) -> dict[str, Any]:
        """The spec as data (dataset.json, SQL): plus the order of the splits, which a JSON
        object with sorted keys (or PostgreSQL's jsonb) would lose; without `mode`, which says
        how the files are delivered, not what they are (a view and a copy are the same tree)."""
        # keys left at their defaults that a spec written before them did not have are left out:
        # its sha256 (and so its version's fingerprint) stays what it was
        d = self.model_dump(mode="json", exclude={"mode"} | ({"template"} if self.template is None else set())
                            | ({"include_blacklisted_lineage"} if not self.include_blacklisted_lineage else set())
                            | ({"audit"} if self.audit == AuditSpec() else set())
                            | ({"convert"} if self.convert else set())
                            | ({"jpeg_quality"} if self.jpeg_quality == 95 else set()))
        d["split"]["order"] = list(self.split.ratios)
        return d

    def selection(self) -> dict[str, Any]:
        """The selector the build runs: `[selector]`, keeping the black-listed lineage when the
        spec says `include_blacklisted_lineage = true`."""
        if self.include_blacklisted_lineage:
            return {**self.selector, "include_blacklisted_lineage": True}
        return self.selector

    def sha256(self) -> str:
        return hashlib.sha256(canonical(self.doc()).encode()).hexdigest()

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> DatasetSpec:
        d = {**d, "split": dict(d["split"])}
        order = d["split"].pop("order", None)
        if order is not None:
            d["split"]["ratios"] = {k: d["split"]["ratios"][k] for k in order}
        return cls.model_validate(d)


def load_spec(path_or_text: str | Path) -> DatasetSpec:
    """A spec from a TOML file (a Path, or a string naming an existing .toml file) or TOML text;
    DatasetError naming the first problem (the file, the key, what to do)."""
    where = "the dataset spec"
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or (text.endswith(".toml") and "\n" not in text):
        path = Path(path_or_text)
        where = f"dataset spec {path}"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DatasetError(f"{where} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{where} cannot be read ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DatasetError(f"{where} is not valid TOML: {e}") from None
    return parse_spec(raw, where)


def parse_text(text: str, where: str = "the dataset spec") -> DatasetSpec:
    """A spec from TOML text, never from a file: what a person typed in the GUI names no file
    on the server (load_spec takes a one-line `….toml` for a path)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DatasetError(f"{where} is not valid TOML: {e}") from None
    return parse_spec(raw, where)


def parse_spec(raw: dict[str, Any], where: str = "the dataset spec") -> DatasetSpec:
    from hoardfs.sql.selectors import SelectorError, parse_selector  # deferred: validation only

    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as e:
        raise DatasetError(f"{where}: {describe_validation_error(e, DatasetSpec)}") from None
    try:
        parse_selector(spec.selector)
    except SelectorError as e:
        raise DatasetError(f"{where}: [selector] {e.message}") from None
    return spec
