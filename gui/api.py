"""HTTP ingest: remote scrapers send batches to `hoard gui` (docs/http-ingest.md).

    POST /api/v1/batches          multipart: `source`, optional `batch`, `files` parts (or a
                                  `manifest` of files already in 3A/<batch>) → 202
                                  {"batch": ID, "status_url": URL}
    GET  /api/v1/batches/{batch}  the batch's `hoard ingest --status BATCH --json` document
    GET  /api/v1/openapi.json     FastAPI's schema of these routes

A scraper signs in with its own token (`hoard tokens add NAME`; `Authorization: Bearer
TOKEN`), never a person's login: the login middleware lets `/api/v1/` through to the checks
here (hoardfs.gui.auth TOKEN_PREFIXES). The body is parsed as it arrives (python-multipart's streaming
parser, fed from `request.stream()`), each file written straight to 3A by hoardfs.jobs.ingest.upload —
no part is held in memory or spooled elsewhere (FastAPI's `UploadFile` would spool to /tmp).
What is checked before a byte of the body is read: the token, Content-Type, Content-Length
against `api.max_batch_mb`, the token's uploads under way (`api.max_uploads_per_token`,
`api.max_reserved_mb_per_token`: 429 past either), and 3A's room for it (its quota and file
system: 507 when full) — of which only what has arrived is held (hoardfs.jobs.ingest.upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from nicegui import app
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from hoardfs.adapters import canonical_source
from hoardfs.base.config import Settings
from hoardfs.base.errors import HoardError
from hoardfs.gui.context import AppStopping, ctx, in_thread
from hoardfs.jobs import tokens
from hoardfs.jobs.ingest import load_state
from hoardfs.jobs.ingest import upload as up_mod
from hoardfs.jobs.ingest.state import names_work
from hoardfs.jobs.ingest.upload import Upload, UploadError

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
#: the fields of a batch's form besides `files`, and the most bytes each may hold (a source
#: name, a batch id; a manifest of files already in 3A, about 100 bytes per file)
TEXT_FIELDS = {"source": 1024, "batch": 1024, "manifest": 64 << 20}
#: an Idempotency-Key: printable ASCII, as Stripe's (at most 255)
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
NO_TOKEN = "send `Authorization: Bearer TOKEN` with a token from `hoard tokens add NAME` (on the server)"

#: one lock per (token, Idempotency-Key) in use, and how many requests hold or wait for it: a
#: retry sent while the first upload still runs waits for its answer instead of making a second
#: batch (one GUI process serves the endpoint); the last one out drops it
_keys: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}


@contextlib.asynccontextmanager
async def _key_turn(key: tuple[str, str]) -> AsyncIterator[None]:
    lock, users = _keys.setdefault(key, (asyncio.Lock(), [0]))
    users[0] += 1
    try:
        async with lock:
            yield
    finally:
        users[0] -= 1
        if not users[0]:
            del _keys[key]


_MULTIPART_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["source"], "properties": {
        "source": {"type": "string", "description": "the source the batch's metadata is in the format of (an "
                   "adapter: ytdlp, gallery_dl, sidecar, csv_manifest, … or a [sources] name of hoard.toml)"},
        "batch": {"type": "string", "description": "the batch id (default: <source>-<UTC time>-<8 hex>)"},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "media and metadata files, each part with its file name (a relative path)"},
        "manifest": {"type": "string", "description": "instead of files: JSON {\"files\": [{\"path\", \"size\", "
                     "\"sha256\" (optional)}]} of the files already copied into 3A/<batch>"},
    }}}}}}
_MULTIPART_BODY["parameters"] = [{
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": KEY.pattern, "maxLength": 255},
    "description": "makes a retry within api.idempotency_hours answer what the first upload under the key (and "
                   "token) was answered, with `Idempotent-Replayed: true`, making no second batch — if it is the "
                   "same request: the same source, batch id, manifest bytes and files (names, sizes, sha256s; in "
                   "any order). Another request under a used key is 422."}]
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {
    "error": {"type": "string"}, "part": {"type": "integer"}}}}}}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="hoard"'} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _reply(status: int, body: dict[str, Any]) -> JSONResponse:
    """The JSON answer; a 408 closes the connection (what the client still sends is not read)."""
    return JSONResponse(body, status_code=status, headers={"Connection": "close"} if status == 408 else None)


class _Refused(Exception):
    """A request answered before its route does anything: `response` says why."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


async def _scraper(request: Request) -> str:
    """The name of the token the request carries; _Refused 401 without a valid one, 503 when
    the tokens file cannot be read (what is wrong with it goes to the log, not to the client)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(_error(401, NO_TOKEN))
    try:
        who = await in_thread(tokens.check, ctx().cfg, token.strip())
    except HoardError as e:
        log.warning("HTTP ingest refused: %s", e.message)
        raise _Refused(_error(503, "the server's tokens file cannot be read; its operator sees why in `hoard tokens "
                                   "list` (and the GUI's log)")) from None
    if who is None:
        raise _Refused(_error(401, NO_TOKEN))
    return who


class _TooSlow(Exception):
    """An upload's body stopped coming (api.idle_timeout_s) or came too slowly to finish
    (api.min_rate_kib_s): answered 408, what it wrote and reserved removed."""


class _Form:
    """python-multipart's callbacks → the upload: each `files` part to its file in 3A, the text
    fields kept (small). Runs in the worker thread that feeds the parser.

    Without an upload (`upload=None`: a retry under a used Idempotency-Key) nothing is written:
    the parts are only hashed. With `digest` each file part is hashed as it passes (its sha256
    and size) for `request_digest`, what a retry is judged the same request by."""

    def __init__(self, cfg: Settings, upload: Upload | None, digest: bool) -> None:
        self.cfg, self.up, self.digest = cfg, upload, digest
        self.part = 0
        self.fields: dict[str, str] = {}
        self.manifest: bytes | None = None
        self.files: list[str] = []  # each file part: its name as sent, size and sha256 (with `digest`)
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._text: str | None = None  # the text field of this part, if it is one
        self._file: str | None = None  # the file name of this part, if it is a file
        self._sha = hashlib.sha256()
        self._size = 0
        self._buf = bytearray()

    def request_digest(self) -> str:
        """The sha256 of what makes the request the request: its source (canonical), batch id
        (none and empty alike), the manifest's bytes, and each file's name, size and sha256 —
        in any order of the parts (docs/http-ingest.md, "Idempotency")."""
        manifest = hashlib.sha256(self.manifest).hexdigest() if self.manifest is not None else "-"
        lines = [json.dumps(["source", self.fields.get("source", "")]),
                 json.dumps(["batch", self.fields.get("batch") or ""]), json.dumps(["manifest", manifest]),
                 *sorted(self.files)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end, "on_end": self._done}

    def _begin(self) -> None:
        self.part += 1
        self._headers, self._text, self._file = {}, None, None
        self._sha, self._size = hashlib.sha256(), 0
        self._buf.clear()

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        kind, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise UploadError(f"part {self.part}: no `Content-Disposition: form-data; name=…`; every part is a named "
                              "form field", part=self.part)
        if name == "files":
            filename = opts.get(b"filename")
            if filename is None:
                raise UploadError(f"part {self.part}: a `files` part needs its file name (`filename=`)", part=self.part)
            self._file = filename.decode("utf-8", "surrogateescape")
            if self.up is not None:
                self.up.open_file(self.part, self._file)
        elif name in TEXT_FIELDS:
            self._text = name
        else:
            raise UploadError(f"part {self.part}: unknown field {name!r}; the fields are source, batch, files and "
                              "manifest", part=self.part)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._text is None:
            if self.digest:
                self._sha.update(data[start:end])
                self._size += end - start
            if self.up is not None:
                self.up.write(data[start:end])
            return
        self._buf += data[start:end]
        if len(self._buf) > TEXT_FIELDS[self._text]:
            raise UploadError(f"part {self.part}: field {self._text} is longer than {TEXT_FIELDS[self._text]} bytes",
                              status=413, part=self.part)

    def _end(self) -> None:
        if self._text is None:
            self.files.append(json.dumps(["file", self._file, self._size, self._sha.hexdigest()]))
            if self.up is not None:
                self.up.close_file()
            return
        if self._text == "manifest":
            self.manifest = bytes(self._buf)
            return
        value = self._buf.decode("utf-8", "replace").strip()
        if self._text == "source":  # a wrong source stops the upload before the files' bytes
            try:
                value = canonical_source(value, self.cfg.sources)
            except HoardError as e:
                raise UploadError(f"part {self.part}: {e.message}", part=self.part) from None
        self.fields[self._text] = value

    def _done(self) -> None:
        self.ended = True


def _framing(request: Request, cfg: Settings) -> tuple[bytes, int]:
    """The body's multipart boundary and its Content-Length; _Refused 415, 411, 400 (empty) or
    413 (past api.max_batch_mb) before a byte of it is read."""
    kind, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _Refused(_error(415, "send the batch as multipart/form-data (curl -F source=NAME -F files=@FILE …)"))
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        raise _Refused(_error(411, "send a Content-Length (the upload's size is reserved in zone 3A before it is "
                                   "read)")) from None
    cap = int(cfg.api.max_batch_mb * (1 << 20))
    if length < 1:
        raise _Refused(_error(400, "the body is empty: send the batch's fields and files"))
    if length > cap:
        raise _Refused(_error(413, f"the upload is {length} bytes, more than api.max_batch_mb = "
                                   f"{cfg.api.max_batch_mb:g} MiB; send it in several batches"))
    return boundary, length


async def _read(request: Request, form: _Form, boundary: bytes, length: int) -> None:
    """Feed the body to the form as it arrives, and check it is a whole form with a source.

    _TooSlow when nothing of it comes for api.idle_timeout_s, or it has not all come by
    idle_timeout_s + its bytes received / api.min_rate_kib_s (a floor on its average rate, not
    on its length: at 1 KiB/s a 10 GiB body may take ~121 days): a client that opens an upload
    and goes quiet holds neither a task nor room in 3A for long, and one that trickles holds
    only what it sent and a step ahead (hoardfs.jobs.ingest.upload)."""
    api = form.cfg.api
    parser = MultipartParser(boundary, form.callbacks(), max_size=length)  # type: ignore[arg-type]
    chunks = request.stream().__aiter__()
    start, got = time.monotonic(), 0
    while True:
        late = start + api.idle_timeout_s + got / (api.min_rate_kib_s * 1024) - time.monotonic()
        wait = min(api.idle_timeout_s, late)
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(anext(chunks), wait)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise _TooSlow(f"no byte of the body came for {api.idle_timeout_s:g} s (api.idle_timeout_s)"
                           if wait == api.idle_timeout_s else
                           f"the body came at less than api.min_rate_kib_s = {api.min_rate_kib_s:g} KiB/s ({got} of "
                           f"its {length} bytes in {time.monotonic() - start:.0f} s)") from None
        if chunk:
            got += len(chunk)
            await in_thread(parser.write, chunk)
    if not form.ended:
        raise UploadError("the body ended before the multipart's closing boundary; send the whole batch again")
    if "source" not in form.fields:
        raise UploadError("no `source` field: name the adapter the metadata is for (e.g. -F source=gallery_dl)")


def _refusal(e: Exception, form: _Form) -> tuple[int, dict[str, Any]]:
    """What an upload that stopped on `e` (one of _STOPS) is answered."""
    if isinstance(e, ClientDisconnect):
        return 400, {"error": "the client disconnected"}  # nobody reads it
    if isinstance(e, _TooSlow):
        return 408, {"error": f"{e}: the upload was ended and nothing of it kept; send the batch again"}
    if isinstance(e, UploadError):
        return e.status, {"error": e.message} | ({"part": e.part} if e.part else {})
    if isinstance(e, MultipartParseError):
        return 400, {"error": f"the body is not well-formed multipart/form-data ({e}); send it again",
                     "part": form.part}
    if isinstance(e, HoardError):  # an unknown source, a batch id used before
        return 400, {"error": e.message}
    assert isinstance(e, OSError)  # the SSD's file system full under the quota, or failing
    refused = up_mod.written_error(e)
    return refused.status, {"error": refused.message, "zone": "3A"}


#: what ends an upload with an answer (`_refusal`); anything else is the GUI stopping, or a bug
_STOPS = (ClientDisconnect, _TooSlow, MultipartParseError, HoardError, OSError)


def _log_stop(e: Exception, what: str, form: _Form) -> None:
    if isinstance(e, ClientDisconnect):
        log.info("%s: the client went away after %d parts; nothing kept", what, form.part)
    elif isinstance(e, _TooSlow):
        log.warning("%s ended after %d parts: %s; nothing kept, its reservation in 3A released", what, form.part, e)


async def _receive(request: Request, who: str, keyed: bool) -> tuple[int, dict[str, Any], str | None]:
    """Take the upload in: (HTTP status, JSON body, the request's digest when `keyed`)."""
    cfg = ctx().cfg
    boundary, length = _framing(request, cfg)
    try:
        upload = await in_thread(Upload.begin, cfg, length, who)
    except UploadError as e:  # 3A full (507), not there or its .tmp not the service's (503), the token's caps (429)
        return e.status, {"error": e.message, "zone": "3A", "next_step": e.next_step or (
            "free space in zone 3A (`hoard zones`), then send the batch again" if e.status == 507
            else "mount the SSD (or `hoard init`), then send the batch again")}, None
    form = _Form(cfg, upload, digest=keyed)
    try:
        await _read(request, form, boundary, length)
        try:  # its token again: revoked (`hoard tokens rm`) while the body came, it takes nothing
            await _scraper(request)
        except _Refused:
            await in_thread(upload.abort)
            log.warning("HTTP upload %s of %s: its token was revoked while it was received; nothing kept", upload.id,
                        who)
            raise
        source, batch = form.fields["source"], form.fields.get("batch") or None
        if form.manifest is None:
            taken = await in_thread(upload.finish, source, batch)
        elif upload.files:
            raise UploadError("send `files` or a `manifest` of files already in 3A, not both")
        else:
            await in_thread(upload.abort)  # (nothing was written: the files are in 3A already)
            taken = await in_thread(up_mod.adopt, cfg, source, batch, form.manifest)
    except _STOPS as e:
        await in_thread(upload.abort)
        _log_stop(e, f"HTTP upload {upload.id} of {who}", form)
        return (*_refusal(e, form), None)
    except BaseException:
        upload.abort()  # (the GUI stopping, or a bug: no thread to ask for)
        raise
    body: dict[str, Any] = {"batch": taken.batch, "source": source, "files": taken.files, "bytes": taken.bytes,
                            "status_url": str(request.url_for("batch_status", batch_id=taken.batch)),
                            "status": taken.state.status if taken.state else "waiting in 3A"}
    if taken.warning:
        body["warning"] = taken.warning
    log.info("HTTP ingest of %s: batch %s, %d files", who, taken.batch, taken.files)
    return 202, body, form.request_digest() if keyed else None


async def _retried(request: Request, who: str, key: str, first: dict[str, Any]) -> Response:
    """A request under an Idempotency-Key answered before: its body read and hashed (nothing
    written), then the first answer again if it is the same request, 422 if it is another."""
    cfg = ctx().cfg
    boundary, length = _framing(request, cfg)
    form = _Form(cfg, None, digest=True)
    try:
        await _read(request, form, boundary, length)
    except _STOPS as e:
        _log_stop(e, f"HTTP retry under a used Idempotency-Key of {who}", form)
        return _reply(*_refusal(e, form))
    if first.get("request") not in (None, form.request_digest()):  # (None: kept before requests were)
        return _error(422, f"Idempotency-Key {key!r} was used for another request (batch "
                           f"{first['body'].get('batch')}): this one differs in its source, batch id, manifest or "
                           "files (names, sizes, sha256s); send a new request under a new key, or that one unchanged")
    return JSONResponse(first["body"], status_code=first["status"], headers={"Idempotent-Replayed": "true"})


async def _sweep() -> None:
    """At start: what uploads cut short by a killed server left in 3A/.tmp goes (their process is gone)."""
    try:
        gone = await in_thread(up_mod.sweep, ctx().cfg)
    except AppStopping:
        return
    except HoardError as e:  # (3A not there: the first upload says so)
        log.warning("HTTP ingest: 3A's temporary uploads not checked: %s", e.message)
        return
    if gone:
        log.info("HTTP ingest: removed %d upload(s) a stopped server left in 3A/.tmp", len(gone))


def register() -> None:
    app.on_startup(_sweep)
    @app.post(f"{PREFIX}/batches", status_code=202, tags=["ingest"], openapi_extra=_MULTIPART_BODY,
              responses={202: {"description": "taken: ingest queued"}, 400: _ERROR, 401: _ERROR,
                         408: _ERROR | {"description": "the body stopped coming (api.idle_timeout_s) or came slower "
                                        "than api.min_rate_kib_s: nothing of the upload kept"},
                         409: _ERROR, 411: _ERROR, 413: _ERROR, 415: _ERROR,
                         429: _ERROR | {"description": "the token has api.max_uploads_per_token uploads under way, or "
                                        "they declare api.max_reserved_mb_per_token together: send it once one "
                                        "ends"},
                         422: _ERROR | {"description": "the Idempotency-Key was used for another request (another "
                                        "source, batch id, manifest or files): send a new key"},
                         507: _ERROR})
    async def post_batch(request: Request) -> Response:
        """Upload a batch into zone 3A and queue its ingest (as `hoard ingest` does).

        An `Idempotency-Key` header makes a retry within `api.idempotency_hours` answer what
        the first upload under that key (and token) was answered, without writing its bytes —
        if it is the same request (`_Form.request_digest`); another request is 422."""
        try:
            who = await _scraper(request)
            key = request.headers.get("idempotency-key")
            if key is None:
                status, body, _ = await _receive(request, who, keyed=False)
                return _reply(status, body)
            if not KEY.match(key):
                return _error(400, "Idempotency-Key: 1 to 255 printable ASCII characters, no spaces")
            async with _key_turn((who, key)):
                first = await in_thread(up_mod.remembered, ctx().cfg, who, key)
                if first is not None:
                    return await _retried(request, who, key, first)
                status, body, digest = await _receive(request, who, keyed=True)
                if status == 202:  # a refusal is not remembered: the retry may succeed
                    await in_thread(up_mod.remember, ctx().cfg, who, key,
                                    {"status": status, "body": body, "request": digest})
                return _reply(status, body)
        except _Refused as r:
            return r.response
        except AppStopping:
            return _error(503, "the GUI is stopping; send the batch again when it is back")

    @app.get(f"{PREFIX}/batches/{{batch_id}}", name="batch_status", tags=["ingest"],
             responses={401: _ERROR, 404: _ERROR})
    async def batch_status(request: Request, batch_id: str) -> Response:
        """The batch's ingest state and report: the `hoard ingest --status BATCH --json` document."""
        try:
            await _scraper(request)
            st = (await in_thread(load_state, ctx().cfg, batch_id)
                  if up_mod.BATCH_ID.match(batch_id) and not names_work(batch_id) else None)
        except _Refused as r:
            return r.response
        except (ValueError, TypeError, OSError, HoardError) as e:  # a damaged or refused record: the detail to the log only
            log.warning("ingest record of batch %s cannot be read: %s", batch_id, e)
            return _error(503, f"the ingest record of batch {batch_id} cannot be read; its operator sees why in "
                               "the GUI's log")
        except AppStopping:
            return _error(503, "the GUI is stopping; ask again when it is back")
        if st is None:
            return _error(404, f"no ingest record of batch {batch_id!r}: not sent, or not queued yet (a batch "
                               "answered with a warning waits in 3A for the ingest timer)")
        return JSONResponse(up_mod.status_document(st))

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        """FastAPI's OpenAPI schema of the ingest routes (no data: open without a token)."""
        routes = [r for r in app.routes if getattr(r, "path", "").startswith(PREFIX)]
        return JSONResponse(get_openapi(title="hoardfs HTTP ingest", version="1", routes=routes,
                                        description="Remote scrapers send batches (docs/http-ingest.md)."))
