"""`hoard.toml`: the one configuration file, validated by pydantic.

Where it is found: `--config PATH`, else `$HOARD_CONFIG`, else `./hoard.toml`, else
`/etc/hoard/hoard.toml`. Relative paths inside the file are relative to the file.
Environment variables `HOARD_<KEY>` override top-level keys (`HOARD_DATABASE_URL`,
`HOARD_REDIS_URL`, ...) and `HOARD_<SECTION>__<KEY>` nested ones (`environment`: read here,
not by pydantic-settings, whose import — asyncio and ssl with it — was a quarter of every
`hoard` command's start). Every key is documented in docs/config.md; a test checks that the
document names them all.

A bad file produces one `ConfigError` line naming the file, the key and what is allowed.

Past 500 lines because it is the schema of one file: a model per table with its checks, the
loading and its one-line errors, and the embedded setup's template (`embedded_config_text`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from hoardfs.base.errors import ConfigError

ZONES = ("3A", "3B", "3C", "3D")
#: the batch formats a `[sources]` entry may name, in the order messages list them: one per
#: adapter of `adapters.FORMATS` (a test keeps the two equal; the config sits below adapters)
SOURCE_FORMATS = ("ytdlp", "gallery_dl", "sidecar", "csv_manifest", "twitter", "reddit", "mastodon",
                  "quickdraw")
ZoneName = Literal["3A", "3B", "3C", "3D"]
SEARCH_PATHS = (Path("hoard.toml"), Path("/etc/hoard/hoard.toml"))

_strict = ConfigDict(extra="forbid")


#: an S3 bucket name: 3–63 lower-case letters, digits, dots and hyphens, a letter or digit at each end
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


#: under ssd.root: the staging folders of the S3 disks that name none (`disks[].path`)
S3_STAGING = "s3-staging"


class DiskConfig(BaseModel):
    """One disk and the label people call it by: an HDD (kind "local": where it is mounted) or
    a bucket on an S3-compatible engine (kind "s3": its endpoint and bucket; docs/scale-out.md)."""

    model_config = _strict
    label: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: Literal["local", "s3"] = "local"
    #: a local disk's mount point (required); an S3 disk's staging folder, where its open shards
    #: are appended before the upload at seal (optional). Typed as what every caller reads:
    #: `_kind` refuses a local disk without one, and Settings gives an S3 disk without one
    #: `<ssd.root>/s3-staging/<label>`, so None never reaches a caller
    path: Path = Field(default=None, validate_default=False)  # type: ignore[assignment]  # see above
    #: cap on the bytes hoard may use on this disk (default: the whole filesystem); an S3 disk's
    #: is required: the engine's free space is not visible through S3
    capacity_gb: float | None = Field(default=None, gt=0)
    #: sequential read bandwidth for the batch read planner; measured if unset
    read_mb_s: float | None = Field(default=None, gt=0)
    #: sequential write bandwidth: a writer with several open shards gives each disk a share
    #: of a batch by it (hoardfs.fsd.io.spread); read_mb_s (or the measured read speed) if unset
    write_mb_s: float | None = Field(default=None, gt=0)
    #: kind "s3": the engine's S3 URL (http:// or https://) and the bucket the disk is
    endpoint: str | None = None
    bucket: str | None = None
    #: kind "s3": how long one request may wait for the engine's answer, in seconds, before it
    #: counts as not answering (each request is tried 3 times, with backoff; then the disk is
    #: `missing` in one line). A slow engine within it is only slow.
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    #: kind "s3": how many copies one replica in this bucket counts as toward copy_of_raw and
    #: copy_of_generated — the engine's own durability where it replicates or erasure-codes
    #: (3 for a pool of three replicas; docs/scale-out.md, "Durability on the engine"). A
    #: local disk is one copy. write_ack still counts disks: an acknowledged write is on that
    #: many distinct disks.
    copies: int = Field(default=1, ge=1, le=16)

    @model_validator(mode="after")
    def _kind(self) -> DiskConfig:
        if self.kind == "local":
            if self.path is None:
                raise ValueError(f"disk {self.label}: path is required (the disk's mount point)")
            for key in ("endpoint", "bucket", "timeout_s", "copies"):
                if key in self.model_fields_set:
                    raise ValueError(f'disk {self.label}: {key} is a key of kind = "s3" disks; add kind = "s3" '
                                     f"or remove {key}")
            return self
        for key, what in (("endpoint", "the engine's S3 URL, as http://host:port"), ("bucket", "the bucket's name"),
                          ("capacity_gb", "the space hoard may use on the engine (S3 does not report free space)")):
            if getattr(self, key) is None:
                raise ValueError(f'disk {self.label} (kind = "s3") needs {key}: {what}')
        url = urlsplit(str(self.endpoint))
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
            raise ValueError(f"disk {self.label}: endpoint {self.endpoint!r} is not an engine's S3 URL: write it as "
                             "http://host:port or https://host")
        if not _BUCKET.match(str(self.bucket)) or ".." in str(self.bucket):
            raise ValueError(f"disk {self.label}: bucket {self.bucket!r} is not an S3 bucket name: 3–63 lower-case "
                             "letters, digits, dots and hyphens, starting and ending with a letter or digit")
        return self


class ZoneConfig(BaseModel):
    model_config = _strict
    quota_gb: float = Field(gt=0)


class Thresholds(BaseModel):
    """Fractions of a zone quota: warn, then deny new work, then emergency cleanup."""

    model_config = _strict
    warn: float = Field(default=0.80, gt=0, le=1)
    deny: float = Field(default=0.90, gt=0, le=1)
    emergency: float = Field(default=0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.warn < self.deny < self.emergency:
            raise ValueError("must satisfy warn < deny < emergency")
        return self


class SSDConfig(BaseModel):
    """The SSD: four quota'd zones and the LMDB index (outside the zones)."""

    model_config = _strict
    root: Path
    #: LMDB index directory; default `<root>/index`
    index_dir: Path | None = None
    zones: dict[ZoneName, ZoneConfig]
    thresholds: Thresholds = Thresholds()
    #: keep a failed job's partial output in `<zone>/.tmp/<id>/` for a look (default: removed)
    keep_failed_outputs: bool = False

    @model_validator(mode="after")
    def _all_zones(self) -> SSDConfig:
        missing = [z for z in ZONES if z not in self.zones]
        if missing:
            raise ValueError(f"zones {', '.join(missing)} missing; all of {', '.join(ZONES)} need a quota_gb")
        if self.index_dir is None:
            self.index_dir = self.root / "index"
        return self

    def zone_path(self, zone: str) -> Path:  # (zones are plain strings everywhere else)
        return self.root / zone


class StoreConfig(BaseModel):
    """System constants of the store (seed defaults)."""

    model_config = _strict
    shard_size_mb: int = Field(default=256, ge=1, le=65536)
    batch_size_gb: float = Field(default=50, gt=0)
    copy_of_raw: int = Field(default=2, ge=2)
    copy_of_generated: int = Field(default=2, ge=2)
    write_ack: int = Field(default=2, ge=1)
    #: shards a writer keeps open at once, each on its own set of write_ack disks, its groups
    #: of records spread over them by the disks' bandwidth: "auto" (enough sets that every disk
    #: writes, hoardfs.fsd.io.spread.auto_open_shards) or a number (1: one shard at a time)
    open_shards: Literal["auto"] | int = "auto"
    a4_scale: int = Field(default=10, ge=1)
    #: accept plain directories as disks (embedded default and unit tests only)
    allow_directory_disks: bool = False

    @field_validator("open_shards", mode="before")
    @classmethod
    def _open_shards(cls, v: Any) -> Any:
        if v == "auto" or (type(v) is int and 1 <= v <= 64):
            return v
        raise ValueError('write "auto" or a number of open shards from 1 to 64')


class IngestConfig(BaseModel):
    """UA_1: how scraped batches in zone 3A are taken in."""

    model_config = _strict
    #: seconds between the two looks at a batch's files; a file that changed meanwhile is
    #: still being written and goes to quarantine instead of being stored half-done
    settle_s: float = Field(default=2.0, ge=0, le=600)
    #: the most memory (MB of address space) the sandboxed parser of one batch may take: a
    #: document that expands past it (a JSON bomb) fails the batch in one line instead of
    #: taking the server's memory (docs/security.md, "Sandboxed parsers")
    parser_memory_mb: int = Field(default=2048, ge=64, le=1 << 20)
    #: hash each batch's images for near-duplicate groups as it is ingested: its finish step
    #: queues the built-in `near-dup-hash` action over the batch (the run a pipeline stage or
    #: `hoard action run near-dup-hash` would make: the same sandbox, the same rows;
    #: docs/near-dups.md)
    near_dup_at_ingest: bool = False


class SearchConfig(BaseModel):
    """Text → image search (`hoard search`, the browser's search box; docs/search.md): the
    open_clip model the built-in `clip-embed` action embeds images with and the text is
    embedded with. Nothing is downloaded: the weights are a file you install."""

    model_config = _strict
    #: an open_clip model name whose config ships with open_clip (ViT-B-32, ViT-L-14, …) or the
    #: path of a model config JSON in open_clip's format
    clip_model: str = Field(default="ViT-B-32", min_length=1, max_length=4096)
    #: the weights file of that model (open_clip's .bin/.pt/.safetensors), readable by the
    #: actions' worker user; unset: search and the clip-embed action say how to install one
    clip_weights: Path | None = None
    #: where clip-embed runs the model: "cuda" waits at the action's GPU gate until a CUDA
    #: device is there; "cpu" runs it on the CPU at once (slow)
    device: Literal["cuda", "cpu"] = "cuda"

    @model_validator(mode="after")
    def _absolute(self) -> SearchConfig:
        # the worker runs in its own directory, as its own user: a relative path would name another file
        if self.clip_weights is not None and not self.clip_weights.is_absolute():
            raise ValueError(f"search.clip_weights: give an absolute path, not {str(self.clip_weights)!r}")
        if self.clip_model.endswith(".json") and not Path(self.clip_model).is_absolute():
            raise ValueError(f"search.clip_model: give a model config JSON as an absolute path, not {self.clip_model!r}")
        return self


class ActionsConfig(BaseModel):
    """UA_2: where the ActionContract files are (docs/actions.md)."""

    model_config = _strict
    #: the directory of contract files, one `<action_id>.toml` per S04 process (default:
    #: `actions/` beside hoard.toml)
    dir: Path | None = None
    #: the user a worker runs as when hoard runs as root and the contract names no `run_as`
    #: (jobs/actions/execute.py); never root unless the contract says `allow_root = true`
    worker_user: str = Field(default="nobody", pattern=r"^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$")
    #: the most bytes a run's children may hold together, checked at parse before anything is
    #: hashed or stored (a contract's `max_output_bytes` overrides it)
    max_output_bytes: int = Field(default=256 << 30, ge=1, le=1 << 60)


class WorkerConfig(BaseModel):
    """`hoard worker` on this host: the store's own server, or a host beside it that stages and
    exports from the store's S3 disks (docs/scale-out.md, "Workers on other hosts")."""

    model_config = _strict
    #: this host is not the store's server: its `hoard worker` serves the `remote` queue only
    #: (stage/export jobs whose every object lies on an S3 disk), runs each against this
    #: host's own hoard.toml (its SSD's 3C/3D, its S3 disks) and never opens the index
    remote: bool = False
    #: seconds between a busy worker's heartbeats to Redis (its job's `last_heartbeat` and its
    #: entry in RQ's started registry are refreshed each time; RQ's job_monitoring_interval)
    heartbeat_s: int = Field(default=10, ge=1, le=25)
    #: a running job whose worker has not heartbeaten for this many seconds (its beat unchanged,
    #: by the reaper's clock) is re-queued by the reaper of the store's server (hoardfs.jobs.reaper, in
    #: its `hoard worker`s, looking every heartbeat_s): a host that died has its job queued again
    #: within reap_after_s + 2 × heartbeat_s (60 s by default). Below 60: RQ lets a silent job's
    #: entry expire heartbeat_s + 60 s after its last beat, and its own clean-up (every 10 min)
    #: then fails the job instead of queueing it again — the reaper comes first while
    #: reap_after_s + heartbeat_s < 60 (a file that sets more is refused)
    reap_after_s: float = Field(default=40, ge=2, le=55)
    #: the embedded default's `hoard worker` (a hoard.toml with [embedded]) queues a replicate job
    #: this often, as hoard-replicate.timer does in an install (hoardfs.jobs.replicator); 0: never.
    #: A hoard.toml without [embedded] leaves it to the timer whatever this says
    replicate_every_s: float = Field(default=300, ge=0, le=86400)

    @model_validator(mode="after")
    def _reap_after_beats(self) -> WorkerConfig:
        if self.reap_after_s < 2 * self.heartbeat_s:
            raise ValueError(f"worker.reap_after_s ({self.reap_after_s:g}) must be at least twice worker.heartbeat_s "
                             f"({self.heartbeat_s:g}): a live worker's job would be taken from it between two beats")
        if self.reap_after_s + self.heartbeat_s >= 60:
            raise ValueError(f"worker.reap_after_s + worker.heartbeat_s ({self.reap_after_s:g} + {self.heartbeat_s:g}) "
                             "must stay below 60: RQ's own clean-up would fail a dead host's job before the reaper "
                             "queues it again")
        return self


class LabelStudioConfig(BaseModel):
    """AC5: the team's Label Studio (docs/actions.md, "AC5 — your Label Studio")."""

    model_config = _strict
    #: where it answers, e.g. "http://labels.lan:8080" (no default: AC5 needs it said)
    url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    #: a file holding the access token (legacy token or personal access token), never the
    #: token itself in hoard.toml; readable by the service user alone (mode 0600)
    token_file: Path | None = None
    #: zone 3C's directory as Label Studio's host sees it (default: 3C's path here, the same host)
    files_root: Path | None = None
    #: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: files_root); files_root
    #: must be it or inside it
    document_root: Path | None = None
    #: a Python with label-studio-sdk for the JSON → COCO conversion (`make labelstudio`'s
    #: var/labelstudio/venv by default)
    converter_python: Path | None = None
    #: seconds one request may take
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    #: `hoard labelstudio up` starts Label Studio confined (Landlock: it reads its venv, the
    #: system's files and the document root, writes its data; a link in 3C to elsewhere is not
    #: served); false starts it unconfined, as its user may
    confine: bool = True

    @field_validator("url")
    @classmethod
    def _parses(cls, url: str | None) -> str | None:
        # its host and port are read wherever it is used (`hoard labelstudio`, AC5): one that
        # does not parse ("…:notaport", "…:99999", "http://[::1") is refused here, named
        if url is not None:
            try:
                _ = urlsplit(url).port
            except ValueError as e:
                raise ValueError(f"not a URL with a valid host and port ({e}); write it as http://HOST:PORT") from None
        return url

    @field_validator("files_root", "document_root")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # paths on Label Studio's host: never taken from hoard.toml's directory
        if path is not None and not path.is_absolute():
            raise ValueError(f"{path} must be an absolute path (as Label Studio's host sees it)")
        return path


#: the events hoardfs records and a webhook may ask for (contracts: receivers match on them;
#: hoardfs.sql.events records them, hoardfs.jobs.events emits and delivers them)
EVENT_NAMES = ("batch_ingested", "run_finished", "run_failed", "gate_waiting", "dataset_built", "disk_failed")


class WebhookConfig(BaseModel):
    """One `[[webhooks]]` table: where events are POSTed, which ones, and the secret their
    bodies are signed with (HMAC-SHA256, `X-Hoard-Signature: sha256=<hex>`; docs/config.md)."""

    model_config = _strict
    #: where the events are POSTed (http or https; the path may hold a token: it is never shown)
    url: str = Field(pattern=r"^https?://[^\s/?#@]+(/[^\s#]*)?(\?[^\s#]*)?$")  # no user:password@
    #: the event names it is sent, or ["*"] for every one
    events: list[str] = Field(min_length=1)
    #: the HMAC-SHA256 key of the signature; never logged, stored or shown
    secret: SecretStr
    #: how logs, the GUI and `hoard webhooks` name it (default: scheme://host:port of the url)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    #: tries of one delivery, the first included, before it is marked failed
    tries: int = Field(default=8, ge=1, le=50)
    #: the wait before the second try; each next wait doubles, up to 6 h (hoardfs.jobs.events.BACKOFF_CAP_S)
    backoff_s: float = Field(default=30.0, gt=0, le=3600)
    #: the longest one try may take (connect, send, answer)
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("events")
    @classmethod
    def _known_events(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n != "*" and n not in EVENT_NAMES]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}; allowed: {', '.join(EVENT_NAMES)} or \"*\" for all")
        return names

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value()) < 16:  # (the value itself is never put in the message)
            raise ValueError("the secret must be at least 16 characters (e.g. the output of `openssl rand -hex 32`)")
        return secret

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events

    @property
    def display(self) -> str:
        """Its name, else scheme://host[:port] of its url: never the userinfo, path or query,
        which may hold a token."""
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @property
    def summary(self) -> str:
        """One line for people (`hoard webhooks list`, the GUI): never the secret or the url's path."""
        return (f"{self.display}: {', '.join(self.events)} — {self.tries} tries, first retry after "
                f"{self.backoff_s:g} s (doubling), {self.timeout_s:g} s per try")

    @property
    def url_sha256(self) -> str:
        """What a delivery row names it by (the url itself is never stored)."""
        return hashlib.sha256(self.url.encode()).hexdigest()


class MountConfig(BaseModel):
    """Where `hoard mount` serves the store (systemd/hoard-mount.service: /srv/hoard): a
    view-mode stage or export points into it."""

    model_config = _strict
    path: Path | None = None
    #: others may look the mount up (FUSE allow_other, default_permissions: the kernel then lets
    #: only the owner and the hoard group read); a mount run as root always does, one run as the
    #: hoard user needs user_allow_other in /etc/fuse.conf (`hoard install --shared-mount`)
    allow_other: bool = False


class LoaderConfig(BaseModel):
    """`[loader]`: where a training loader (`hoardfs.loader.Loader`) reads a dataset version's
    samples on this host (docs/datasets.md, "From another host")."""

    model_config = _strict
    #: "store": the store's own index and disks (the store's server); "s3": the version's
    #: published locator and the sealed shards on the S3 disks (`hoard dataset publish`); "mount":
    #: the published locator and the objects' files through a hoard mount
    source: Literal["store", "s3", "mount"] = "store"
    #: source "s3": the S3 disk (a `[[disks]]` label) whose bucket holds the published locators
    #: (default: the first S3 disk of the file)
    disk: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    #: source "mount": the hoard mount's path (default: `[mount] path`)
    mount: Path | None = None
    #: source "mount": the directory holding the published locators (`hoard dataset publish
    #: NAME@N --dir DIR`), one file `<name>@<N>.json` each
    locators: Path | None = None
    #: source "mount": seconds a read of the mount may give nothing before the loader stops in one
    #: line (a mount whose daemon is stopped or stuck: the kernel waits for it without end)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)


class LoaderHost(BaseModel):
    """What a training loader reads of hoard.toml when `[loader] source` is "s3" or "mount": a
    host with no PostgreSQL, no Redis and no index of the store — its `[loader]`, its S3 disks
    and `[mount]`; any other table (a remote worker's) is left to the programs that read it."""

    model_config = ConfigDict(extra="ignore")
    loader: LoaderConfig = LoaderConfig()
    disks: list[DiskConfig] = []
    mount: MountConfig = MountConfig()
    #: the file this came from (set by `load_loader_host`)
    source: Path | None = Field(default=None, exclude=True)


class GuiUser(BaseModel):
    """A login of `hoard gui` given in hoard.toml (`hoard users add` keeps others in `gui.users_file`)."""

    model_config = _strict
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")
    role: Literal["admin", "operator", "viewer"]
    #: an argon2 hash (`hoard users hash` prints one); never the password itself
    password_hash: str = Field(pattern=r"^\$argon2")


#: the loopback networks: a proxy there cannot be told from a local user
_LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("::ffff:127.0.0.0/104"))


class GuiConfig(BaseModel):
    """`hoard gui`: where it listens, its logins and sessions, how often it refreshes."""

    model_config = _strict
    #: localhost by default: put a TLS proxy in front before opening it to a network
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    users: list[GuiUser] = []
    #: the users `hoard users add|passwd|rm` manage; default `<ssd.root>/state/gui/users.json`
    users_file: Path | None = None
    #: a login lasts this long, then the next page asks again
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    #: failed logins of one name or one client allowed per `login_window_s` before a wait
    login_attempts: int = Field(default=5, ge=1, le=1000)
    login_window_s: float = Field(default=300.0, gt=0, le=86400)
    #: password checks (argon2: 64 MiB and about 0.1 s of the cores each) run at once; the rest
    #: wait a few seconds for a turn, then get 429 + Retry-After. Default: half the cores, 1..8
    login_concurrency: int | None = Field(default=None, ge=1, le=64)
    #: reverse proxies on other hosts (addresses or CIDRs) whose X-Forwarded-For names the
    #: client; from any other address the header is ignored (docs/security.md, Logins). Never
    #: a loopback address: every local user connects from one
    trusted_proxies: list[IPvAnyNetwork] = []
    #: a TLS proxy on this host: `hoard gui` listens on this unix socket instead of host:port,
    #: and every connection on it is the proxy's (its X-Forwarded-For names the client)
    socket: Path | None = None
    #: the group whose members (the proxy's user) may connect to `socket` (mode 0660); default
    #: the service user's own group
    socket_group: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}\$?$")
    #: the longest a request's head (its request line and headers) may take to arrive, from the
    #: connection's first moment or the request's first byte: past it, 408 and the connection
    #: closed — a client dribbling a header line a second holds no connection for ever
    header_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    #: seconds between the one background refresh of what the pages show (health, counts)
    refresh_s: float = Field(default=10.0, ge=1, le=3600)
    #: the session cookie is `Secure` (sent over HTTPS only): on when a TLS proxy serves the GUI;
    #: off for the plain-HTTP listener it has itself, where a Secure cookie would never come back
    secure_cookies: bool = False
    #: the most memory (MB of address space) the thumbnail decoder process may take: an image
    #: that decodes past it gets no thumbnail (docs/security.md, "Sandboxed parsers")
    thumbnail_memory_mb: int = Field(default=1024, ge=64, le=1 << 20)

    @field_validator("trusted_proxies")
    @classmethod
    def _no_local_proxy(cls, proxies: list[IPv4Network | IPv6Network]) -> list[IPv4Network | IPv6Network]:
        for net in proxies:
            if any(net.overlaps(lo) for lo in _LOOPBACK if lo.version == net.version):
                raise ValueError(f"{net} holds loopback addresses, and any local user connects from it and writes "
                                 "X-Forwarded-For; for a proxy on this host set gui.socket instead (docs/security.md)")
        return proxies


class ApiConfig(BaseModel):
    """The HTTP ingest endpoint of `hoard gui` (`POST /api/v1/batches`; docs/http-ingest.md):
    its scrapers' tokens and the limits of one upload, checked before its bytes are accepted."""

    model_config = _strict
    #: the tokens `hoard tokens add|rm` manage (sha256 hashes only); default
    #: `<ssd.root>/state/gui/tokens.json`, beside the users file
    tokens_file: Path | None = None
    #: the most bytes one upload may send (its Content-Length, the multipart framing included)
    max_batch_mb: float = Field(default=10240, gt=0, le=1 << 30)
    #: the most bytes one file of an upload may hold
    max_file_mb: float = Field(default=4096, gt=0, le=1 << 30)
    #: the most files one upload may hold
    max_files: int = Field(default=20000, ge=1, le=10_000_000)
    #: how long an `Idempotency-Key` is remembered: a retry within it gets the first answer
    idempotency_hours: float = Field(default=24, gt=0, le=24 * 365)
    #: the longest an upload's body may send nothing: past it the upload ends (408) and what it
    #: wrote and reserved in 3A goes — a client that opens an upload and goes quiet holds neither
    idle_timeout_s: float = Field(default=60, gt=0, le=24 * 3600)
    #: the least an upload's body must average, in KiB/s, once `idle_timeout_s` has passed: its
    #: deadline is `idle_timeout_s` + its bytes received / this rate (Apache mod_reqtimeout's
    #: MinRate) — a client sending a byte now and then cannot hold an upload for ever either
    min_rate_kib_s: float = Field(default=1, gt=0, le=1 << 30)
    #: the most uploads one token may have under way at once: past it 429 before the body is read
    max_uploads_per_token: int = Field(default=4, ge=1, le=10_000)
    #: the most bytes one token's uploads under way may declare together (their Content-Lengths:
    #: what they may come to hold of 3A): past it 429 before the body is read
    max_reserved_mb_per_token: float = Field(default=20480, gt=0, le=1 << 30)

    @model_validator(mode="after")
    def _one_upload_fits(self) -> ApiConfig:
        if self.max_reserved_mb_per_token < self.max_batch_mb:
            raise ValueError(f"max_reserved_mb_per_token = {self.max_reserved_mb_per_token:g} is less than "
                             f"max_batch_mb = {self.max_batch_mb:g}: an upload of that size could never be taken; "
                             "raise max_reserved_mb_per_token (or lower max_batch_mb)")
        return self


class EmbeddedConfig(BaseModel):
    """Private PostgreSQL and Redis run by `hoard services up` under `root`."""

    model_config = _strict
    root: Path
    postgres: bool = True
    redis: bool = True

    @property
    def pg_dir(self) -> Path:
        return self.root / "pg"

    @property
    def pg_socket_dir(self) -> Path:
        # inside pg/ so that the server user can write it even when pg/ is relocated
        return self.pg_dir / "socket"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_socket(self) -> Path:
        return self.root / "run" / "redis.sock"


class Settings(BaseModel):
    """The validated contents of hoard.toml plus environment overrides (`load`)."""

    model_config = _strict

    disks: list[DiskConfig] = Field(min_length=1)
    ssd: SSDConfig
    store: StoreConfig = StoreConfig()
    ingest: IngestConfig = IngestConfig()
    mount: MountConfig = MountConfig()
    gui: GuiConfig = GuiConfig()
    #: source name → format of its batches (a format's own name needs no entry)
    sources: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")], str] = {}
    embedded: EmbeddedConfig | None = None
    # typed as what every caller reads: `_consistent` derives each URL or refuses the file, so
    # None ("not given") never outlives validation, and None is no str: the default is not validated
    database_url: str = Field(default=None, validate_default=False)  # type: ignore[assignment]  # see above
    test_database_url: str = Field(default=None, validate_default=False)  # type: ignore[assignment]  # see above
    redis_url: str = Field(default=None, validate_default=False)  # type: ignore[assignment]  # see above
    test_redis_url: str = Field(default=None, validate_default=False)  # type: ignore[assignment]  # see above
    actions: ActionsConfig = ActionsConfig()
    #: `hoard worker` on this host: remote or the store's server, heartbeat and reaper
    worker: WorkerConfig = WorkerConfig()
    label_studio: LabelStudioConfig = LabelStudioConfig()
    #: where events are POSTed (hoardfs.jobs.events; docs/config.md, "[[webhooks]]")
    webhooks: list[WebhookConfig] = []
    #: the HTTP ingest endpoint's tokens file and limits (hoardfs.gui.api; docs/http-ingest.md)
    api: ApiConfig = ApiConfig()
    #: text → image search: the CLIP model (docs/search.md)
    search: SearchConfig = SearchConfig()
    #: where a training loader reads samples on this host (docs/datasets.md, "From another host")
    loader: LoaderConfig = LoaderConfig()
    #: the file this came from (set by `load`, not a key of the file)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        labels = [d.label for d in self.disks]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"disk labels must be unique; repeated: {', '.join(dup)}")
        for d in self.disks:  # an S3 disk's staging folder, when not given: on the SSD
            if d.kind == "s3" and d.path is None:
                d.path = self.ssd.root / S3_STAGING / d.label
        paths = [d.path for d in self.disks]
        if len(set(paths)) != len(paths):
            raise ValueError("disk paths must be unique")
        urls = [w.url for w in self.webhooks]
        again = next((i for i, u in enumerate(urls) if u in urls[:i]), None)
        if again is not None:  # (a delivery names its webhook by the url: each receiver one table)
            raise ValueError(f"webhooks[{again}]: the same url as webhooks[{urls.index(urls[again])}]; give a "
                             "receiver one [[webhooks]] table with every event it wants")
        bad = {k: v for k, v in self.sources.items() if v not in SOURCE_FORMATS}
        if bad:
            name, fmt = next(iter(bad.items()))
            raise ValueError(f"sources.{name} = {fmt!r} is not a format; allowed: {', '.join(SOURCE_FORMATS)}")
        n = sum(d.copies for d in self.disks)
        weighted = "" if n == len(self.disks) else " (an S3 disk counts as its `copies`)"
        st = self.store
        # (a remote worker's host writes nothing to the store: one S3 disk it reads is enough)
        for key in ("copy_of_raw", "copy_of_generated"):
            if getattr(st, key) > n and not self.worker.remote:
                raise ValueError(f"store.{key}={getattr(st, key)} needs that many disks; allowed 2..{n} with "
                                 f"{len(self.disks)} disks{weighted}")
        if st.write_ack > len(self.disks) and not self.worker.remote:
            raise ValueError(f"store.write_ack={st.write_ack} needs that many disks: an acknowledged write is on "
                             f"write_ack distinct disks; allowed 1..{len(self.disks)} with {len(self.disks)} disks")
        if st.write_ack > min(st.copy_of_raw, st.copy_of_generated):
            raise ValueError(f"store.write_ack={st.write_ack} must not exceed copy_of_raw/copy_of_generated")
        if self.embedded is not None:
            e = self.embedded
            if self.database_url is None and e.postgres:
                self.database_url = (
                    f"postgresql://hoard@/hoard?host={quote(str(e.pg_socket_dir), safe='/')}"
                )
            if self.redis_url is None and e.redis:
                self.redis_url = f"unix://{e.redis_socket}?db=0"
        if self.database_url is None:
            raise ValueError("database_url is required (or an [embedded] section with postgres = true)")
        if self.redis_url is None:
            raise ValueError("redis_url is required (or an [embedded] section with redis = true)")
        if self.test_database_url is None:
            self.test_database_url = _derive_test_db_url(self.database_url)
        if self.test_redis_url is None:
            self.test_redis_url = _derive_test_redis_url(self.redis_url)
        return self

    @property
    def disk_copies(self) -> dict[str, int]:
        """Each disk's label → the copies one replica there counts as toward copy_of_raw and
        copy_of_generated (`disks[].copies`: an S3 disk's engine; 1 for a local disk)."""
        return {d.label: d.copies for d in self.disks}

    @property
    def index_dir(self) -> Path:
        assert self.ssd.index_dir is not None
        return self.ssd.index_dir

    @property
    def actions_dir(self) -> Path:
        """Where the ActionContract files are: `actions.dir`, else `actions/` beside hoard.toml."""
        if self.actions.dir is not None:
            return self.actions.dir
        return (self.source.parent if self.source is not None else Path.cwd()) / "actions"

    @property
    def gui_users_file(self) -> Path:
        return self.gui.users_file or self.ssd.root / "state" / "gui" / "users.json"

    @property
    def api_tokens_file(self) -> Path:
        return self.api.tokens_file or self.ssd.root / "state" / "gui" / "tokens.json"


def _derive_test_db_url(url: str) -> str:
    """Same server, database `<name>_test`: tests never touch the working database."""
    if url.startswith(("postgresql://", "postgres://")):  # a URI: no need of libpq to read it
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "dbname" for k, _ in query):  # (a dbname parameter wins over the path)
            query = [(k, f"{v or 'hoard'}_test" if k == "dbname" else v) for k, v in query]
            return _uri(parts._replace(query=urlencode(query, safe="/")))
        return _uri(parts._replace(path="/" + quote(f"{unquote(parts.path[1:]) or 'hoard'}_test")))
    # deferred: psycopg (~0.1 s, ~15 MiB resident) loads only for a key=value conninfo
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = f"{params.get('dbname') or 'hoard'}_test"
    return psycopg.conninfo.make_conninfo("", **params)


def _uri(parts) -> str:
    """urlunsplit, but keeping `//` before an empty host (postgresql:///hoard: the local socket)."""
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _derive_test_redis_url(url: str) -> str:
    """Same Redis, database number 1 more than the working one (0 → 1). Read as redis-py reads
    it (`?db=` wins over a redis:// path), without loading redis-py (~15 MiB resident)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"redis_url {url!r}: must start with redis://, rediss:// or unix://")
    given = dict(parse_qsl(parts.query)).get("db") or (parts.scheme != "unix" and unquote(parts.path).strip("/")) or 0
    try:
        db = int(given) + 1
    except ValueError:
        raise ValueError(f"redis_url {url!r}: database {given!r} is not a number") from None
    base, _, query = url.partition("?")
    rest = [p for p in query.split("&") if p and not p.startswith("db=")]
    if base.startswith("unix://"):
        return f"{base}?{'&'.join(rest + [f'db={db}'])}"
    head, _, _old = base.rpartition("/") if base.count("/") > 2 else (base, "", "")
    return f"{head}/{db}" + (f"?{'&'.join(rest)}" if rest else "")


# -- loading -----------------------------------------------------------------------

def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use, or a ConfigError saying how to make one."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("HOARD_CONFIG")
    if env:
        return Path(env)
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no hoard.toml found (looked at --config, $HOARD_CONFIG, ./hoard.toml, /etc/hoard/hoard.toml); "
        "run `hoard init --embedded` for the embedded default or see docs/config.md"
    )


#: path keys that name a place on another host (Label Studio's): never resolved against
#: hoard.toml's directory; their models refuse a relative value
_REMOTE_PATHS = frozenset({("label_studio", "files_root"), ("label_studio", "document_root")})


def _models_of(annotation: Any) -> tuple[bool, list[type[BaseModel]]]:
    """(is a list, the models) a field's annotation holds: `M`, `M | None`, `list[M]`."""
    listed = get_origin(annotation) is list
    inner = get_args(annotation) if listed or get_args(annotation) else (annotation,)
    return listed, [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]


def path_keys() -> list[tuple[str, str, bool]]:
    """Every `(section, key, listed)` of hoard.toml whose value is a path on this host, found by
    walking the models (so a new path key is resolved without being listed anywhere): `listed`
    for a section that is a list of tables (`[[disks]]`)."""
    keys = []
    for section, field in Settings.model_fields.items():
        if field.exclude:
            continue
        listed, models = _models_of(field.annotation)
        for model in models:
            for key, sub in model.model_fields.items():
                ann = sub.annotation
                if (ann is Path or Path in get_args(ann)) and (section, key) not in _REMOTE_PATHS:
                    keys.append((section, key, listed))
    return keys


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths of the file made absolute against its directory (`path_keys`)."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str((base / value).resolve())
        return value

    for section, key, listed in path_keys():
        sect = data.get(section)
        tables = (sect if isinstance(sect, list) else []) if listed else [sect]
        for table in tables:
            if isinstance(table, dict) and key in table:
                table[key] = fix(table[key])


_Model = TypeVar("_Model", "Settings", "LoaderHost")


def _validated(model: type[_Model], explicit: str | os.PathLike[str] | None) -> _Model:
    """The configuration found (`_read`) validated as `model`, its `source` set; ConfigError
    naming the file on any problem."""
    path, data = _read(explicit)
    try:
        out = model(**data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_validation_error(e)}") from None
    out.source = path.resolve()
    return out


def load(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and return the configuration; ConfigError on any problem."""
    return _validated(Settings, explicit)


def load_loader_host(explicit: str | os.PathLike[str] | None = None) -> LoaderHost:
    """The `[loader]`, S3 disks and `[mount]` of the configuration, validated alone (a training
    loader's host has no database nor SSD); ConfigError on any problem."""
    return _validated(LoaderHost, explicit)


def _read(explicit: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Any]]:
    """The file found (`find_config`) and its tables: parsed, relative paths made absolute
    against its directory, the environment's keys laid over them."""
    path = find_config(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; run `hoard init --embedded` or see docs/config.md") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    _resolve_paths(data, path.resolve().parent)
    # the environment beats the file, so HOARD_DATABASE_URL can point a checkout at a running
    # server without editing hoard.toml
    _overlay(data, environment())
    return path, data


#: the prefix of an environment variable that gives a key of hoard.toml
ENV_PREFIX = "HOARD_"
#: what separates a section from its key in such a variable's name
ENV_NESTED = "__"


def environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The keys of hoard.toml the environment gives, as the file's tables would hold them:
    `HOARD_<KEY>` a top-level key, `HOARD_<SECTION>__<KEY>` (deeper: `__` again) a nested one;
    names in any case. A value for a table or a list is JSON (`HOARD_DISKS='[{...}]'`), any
    other is the string as given (validation converts it, as it does the file's); a top-level
    table or list given as JSON `null` is not given. A variable whose first word names no key —
    `HOARD_CONFIG`, `HOARD_LOG_JSON`, the ones the programs read themselves — or that goes below
    a top-level key that is no table (`HOARD_REDIS_URL__FILE`) is none of this. ConfigError,
    naming the variable, for JSON that does not parse or a key inside a list."""
    found: dict[str, Any] = {}
    for name, value in sorted((os.environ if env is None else env).items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split(ENV_NESTED)
        top = Settings.model_fields.get(path[0])
        if top is None or top.exclude or (len(path) > 1 and not _is_table_or_list(top.annotation)):
            continue  # (HOARD_REDIS_URL__FILE: a string has no keys; pydantic-settings read none either)
        table, tp = found, Any
        for i, key in enumerate(path):
            within = Settings if i == 0 else tp
            path[i] = key = _dict_key(within, key)
            tp = _key_type(within, key)
            if i == len(path) - 1:
                break
            if get_origin(_unwrap(tp)) is list:
                raise ConfigError(f"{name}: {'.'.join(path[:i + 1])} is a list, which takes no key of its own; give "
                                  f"it whole as JSON in {ENV_PREFIX}{ENV_NESTED.join(path[:i + 1]).upper()}")
            nested = table.setdefault(key, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:i + 1])} is also given whole by another variable")
            table = nested
        if value and _is_table_or_list(tp):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ConfigError(f"{name}: {'.'.join(path)} is a table or a list: give it as JSON ({e})") from None
            if value is None and len(path) == 1:
                continue  # `null`: nothing given, the file's stands (as pydantic-settings had it)
        if isinstance(table.get(path[-1]), dict) and isinstance(value, dict):
            _overlay(value, table[path[-1]])  # HOARD_STORE='{...}' and HOARD_STORE__KEY: the key wins
        table[path[-1]] = value
    return found


def _dict_key(within: Any, key: str) -> str:
    """`key` as a dict of `within` spells it where its keys are fixed words in capitals (the
    zones: HOARD_SSD__ZONES__3A__QUOTA_GB, whose name comes lower-cased), else as given."""
    inner = _unwrap(within)
    if get_origin(inner) is dict:
        words = get_args(get_args(inner)[0]) if get_origin(get_args(inner)[0]) is Literal else ()
        return next((w for w in words if isinstance(w, str) and w.lower() == key), key)
    return key


def _key_type(within: Any, key: str) -> Any:
    """The type of `key` inside a value of type `within`: a model's field, a dict's value
    (a `[sources]` or `[ssd.zones]` entry), Any where it is not known (validation names it)."""
    inner = _unwrap(within)
    fields = getattr(inner, "model_fields", None)
    if fields is not None:
        return fields[key].annotation if key in fields else Any
    if get_origin(inner) is dict:
        return _unwrap(inner, item=True)
    return Any


def _is_table_or_list(tp: Any) -> bool:
    inner = _unwrap(tp)
    return get_origin(inner) in (list, dict) or inner in (list, dict) or (
        isinstance(inner, type) and issubclass(inner, BaseModel))


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> None:
    """`over`'s keys into `base`, table into table: a key of `over` replaces the same key of
    `base`, and a table of both keeps `base`'s other keys."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _overlay(base[key], value)
        else:
            base[key] = value


def describe_validation_error(err: ValidationError, model: Any = None) -> str:
    """One line: `key: what is wrong (got X); allowed: …` for the first error.

    `model` is the pydantic model that was validated (default: Settings); it tells which
    keys are allowed where an unknown one was found.
    """
    errors = err.errors(include_url=False)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return _describe(errors[0], model) + more


def describe_validation_errors(err: ValidationError, model: Any = None) -> list[str]:
    """One line per error, each as `describe_validation_error` words the first."""
    return [_describe(e, model) for e in err.errors(include_url=False)]


def _describe(first: Any, model: Any) -> str:
    loc = [p for p in first["loc"]]
    key = _dotted(loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model or Settings, loc[:-1])
        msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)) and "secret" not in loc:  # never echoed
            msg += f" (got {first['input']!r})"
    return f"{key}: {msg}"


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(model: Any, loc: list[Any]) -> list[str]:
    """Field names of the model found by walking `loc` down from `model`."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int) or part in ZONES:
            current = _unwrap(current, item=True)
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    current = _unwrap(current)
    fields = getattr(current, "model_fields", {})
    return [k for k, f in fields.items() if not f.exclude]  # excluded fields are not keys of the file


def _unwrap(tp: Any, item: bool = False) -> Any:
    origin = get_origin(tp)
    args = [a for a in get_args(tp) if a is not type(None)]
    if origin in (list, dict) and item:
        return args[-1]
    if origin is not None and origin not in (list, dict) and args:
        return _unwrap(args[0], item)
    return tp


# -- the embedded default -------------------------------------------------------------

EMBEDDED_TEMPLATE = """\
# hoard.toml — the embedded default written by `hoard init --embedded`.
# Directory-backed "disks" of unequal size, SSD zones, a private PostgreSQL and Redis,
# all under ./{var}. Every key is documented in docs/config.md.

[store]
shard_size_mb = 16          # small shards so the demo shows several
batch_size_gb = 1
copy_of_raw = 3             # four disks: show the replicator bringing raw data to 3 copies
copy_of_generated = 2
write_ack = 2
a4_scale = 10
allow_directory_disks = true

[[disks]]
label = "hdd1"
path = "{var}/disks/hdd1"
capacity_gb = 4

[[disks]]
label = "hdd2"
path = "{var}/disks/hdd2"
capacity_gb = 3

[[disks]]
label = "hdd3"
path = "{var}/disks/hdd3"
capacity_gb = 2

[[disks]]
label = "hdd4"
path = "{var}/disks/hdd4"
capacity_gb = 1.5

[ingest]
settle_s = 1.0

[sources]                   # the sample generator's sources → built-in formats
gallery = "gallery_dl"
forum = "csv_manifest"

[ssd]
root = "{var}/ssd"

[ssd.zones.3A]
quota_gb = 2
[ssd.zones.3B]
quota_gb = 2
[ssd.zones.3C]
quota_gb = 1
[ssd.zones.3D]
quota_gb = 1

[ssd.thresholds]
warn = 0.80
deny = 0.90
emergency = 0.95

[embedded]
root = "{var}"
postgres = true
redis = true
"""


def embedded_config_text(var: str = "var") -> str:
    return EMBEDDED_TEMPLATE.format(var=var)
