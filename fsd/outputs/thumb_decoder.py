"""The GUI's thumbnails are decoded by Pillow in a process of their own that Landlock confines:
it writes nothing, starts nothing and reads only Python's own files — the images are scraped
(hostile) and the GUI process holds the users' password hashes, the session key and the store.

`Decoder.thumbnail(data)` sends the bytes over a pipe and gets the JPEG back; the process is
started on first use (`python -m hoardfs.fsd.outputs.thumb_decoder`), serves one image after another,
and is started anew after it dies (an image that crashes Pillow gets no thumbnail; the next
image gets a new process). Where the kernel has no Landlock it runs unconfined (`hoard health`
warns), still a process apart.

Its memory is bounded (`memory_mb`, gui.thumbnail_memory_mb: RLIMIT_AS, set before the walls
go up): an image that decodes past it — a decompression bomb within MAX_PIXELS, a plugin made to
allocate — gets no thumbnail, its memory freed, instead of taking the server's.

Wire format, both ways: a kind byte (request: `I`; answer: `J` a JPEG, `N` none and why, `M`
none: decoding it needs more memory than the decoder may take), an 8-byte big-endian length,
the payload.
"""

from __future__ import annotations

import io
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time

from hoardfs.base import landlock
from hoardfs.base.paths import display
from hoardfs.base.proc import end_group, ended

log = logging.getLogger(__name__)
SIZE = (256, 256)
#: nor decoded when their pixels (width × height, from the header) exceed this: a few KB of
#: PNG can declare 20,000 × 20,000 pixels (an "image bomb") and take gigabytes to decode
MAX_PIXELS = 40_000_000
#: the formats a thumbnail is made of (Pillow would otherwise try every plugin it has on
#: untrusted bytes — EPS runs Ghostscript where it is installed)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
#: an image whose decode takes longer gets no thumbnail (the process is killed and restarted)
DECODE_TIMEOUT_S = 60.0
#: the largest answer taken from it (a 256 × 256 JPEG is tens of KB)
MAX_ANSWER = 4 << 20
#: the memory (MB of address space) the decoder may take unless told (gui.thumbnail_memory_mb)
MEMORY_MB = 1024
_HEAD = struct.Struct(">cQ")
#: what the decoder prints on its stderr is kept up to this for the log's one line, the rest read
#: and dropped (a full pipe would stop it; its text is the hostile image's)
_SAID_MAX = 2000
#: what `make` answers for an image that needs more memory than the process may take (no
#: reason of Pillow's starts so: those start with the exception's name)
_OUT_OF_MEMORY = "\0out of memory"


def make(data: bytes) -> tuple[bytes | None, str]:
    """(the JPEG thumbnail, "") or (None, why not). Runs in the confined process."""
    from PIL import Image, UnidentifiedImageError  # deferred: only the decoder process loads Pillow

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            # the size the header declares, before draft() shrinks it: a progressive JPEG is
            # decoded into whole-image coefficient buffers whatever the scale (a 2 MB 13000 ×
            # 13000 one passed at 1/8 and grew the GUI from 156 MB to 1.15 GB)
            limit = MAX_PIXELS // 4 if im.format == "JPEG" and im.info.get("progressive") else MAX_PIXELS
            if im.width * im.height > limit:
                return None, ""
            im.draft("RGB", SIZE)  # JPEG: decode at a reduced scale (a 60 MP photo at 1/8)
            im.thumbnail(SIZE)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=80)
            return buf.getvalue(), ""
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None, ""
    except MemoryError:  # the decode's buffers are freed by now
        return None, _OUT_OF_MEMORY
    except Exception as e:  # untrusted bytes: Pillow's plugins raise what they like
        return None, f"{type(e).__name__}: {e}"


class Decoder:
    """The parent's end: one decode at a time (callers hold their own lock or share this one)."""

    def __init__(self, argv: list[str] | None = None, timeout_s: float = DECODE_TIMEOUT_S,
                 memory_mb: int = MEMORY_MB) -> None:
        #: the decoder's command (another only in the test of what a decoder made to lie can do);
        #: it is given `memory_mb` as its last argument (a change applies to the next one started)
        self.argv = argv or [sys.executable, "-P", "-s", "-m", "hoardfs.fsd.outputs.thumb_decoder"]
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: _Stderr | None = None
        self.lock = threading.Lock()

    def set_memory(self, memory_mb: int) -> None:
        """The decoder started next may take `memory_mb` MB; a running one with another bound ends."""
        with self.lock:
            if memory_mb != self.memory_mb:
                self.memory_mb = memory_mb
                self.close()

    def thumbnail(self, data: bytes) -> tuple[bytes | None, str]:
        """(JPEG, "") or (None, why not: "" for "not an image we decode"). The answer is the
        decoder's, the process that read the hostile bytes: taken only as a JPEG of at most
        MAX_ANSWER bytes within `timeout_s` (DECODE_TIMEOUT_S) from the first byte sent, else
        the process is killed."""
        jpeg, why, _lasting = self.decode(data)
        return jpeg, why

    def decode(self, data: bytes) -> tuple[bytes | None, str, bool]:
        """`thumbnail`'s answer and whether it is the image's own (lasting: a JPEG, or the
        decoder's "none" — not an image, Pillow's error, past the memory bound) rather than the
        process's failure on it (killed, ended, out of time, a lie), which may be another cause
        of the moment (the GUI's caller decides whether to try again)."""
        with self.lock:
            try:
                return self._exchange(data)
            finally:
                if self._stderr is not None:
                    self._stderr.report()

    def _exchange(self, data: bytes) -> tuple[bytes | None, str, bool]:
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        # the deadline covers the sending too: a decoder that stopped reading its stdin held the
        # lock, and every thumbnail of the GUI, for ever
        deadline = time.monotonic() + self.timeout_s
        try:
            _send(proc.stdin.fileno(), _HEAD.pack(b"I", len(data)) + data, deadline, self._stderr)
            kind, payload = _read(proc.stdout.fileno(), deadline, MAX_ANSWER, self._stderr)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            self.close()
            return None, f"the decoder process ended on it ({type(e).__name__}: {e})", False
        if kind == b"J" and payload.startswith(b"\xff\xd8\xff"):
            return payload, "", True
        if kind == b"N":
            return None, display(payload.decode("utf-8", "replace")[:300]), True
        if kind == b"M":
            return None, f"decoding it needs more than {self.memory_mb} MB (gui.thumbnail_memory_mb)", True
        self.close()
        return None, "the decoder process answered with something that is not a JPEG", False

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and ended(self._proc):  # (not poll(): it would reap it before `close`)
            self.close()  # it died (killed, or crashed on the last image): its pipes closed, a new one started
        if self._proc is None:
            # a session of its own: the GUI's stderr may be the terminal that started it, and a
            # decoder taken over pushed keystrokes into that shell (TIOCSTI on its controlling
            # terminal; Landlock does not restrict a descriptor it inherits)
            # its stderr is a pipe of ours, never the GUI's: what it prints is the image's text
            self._proc = subprocess.Popen([*self.argv, str(self.memory_mb)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                          env=landlock.child_env())
            assert self._proc.stderr is not None
            self._stderr = _Stderr(self._proc.stderr.fileno())
        return self._proc

    def close(self) -> None:
        """End the decoder and its whole process group: what a decoder taken over forked may
        have closed its pipes and live on (`end_group`)."""
        if self._proc is not None:
            end_group(self._proc)
            if self._stderr is not None:
                self._stderr.report()  # its last words (a crash), before the pipe goes
            for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if f is not None:
                    f.close()
            self._proc, self._stderr = None, None


class _Stderr:
    """The decoder's stderr, read whenever the parent waits on it (a full pipe would stop it):
    the first `_SAID_MAX` bytes kept, the rest counted and dropped; `report` logs them as one
    line shown safe (`display`: no escape sequence, no newline; a log record's arguments are
    never markup)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd, self.open = fd, True
        self.said, self.dropped = bytearray(), 0

    def drain(self) -> None:
        for _ in range(16):  # a bounded turn: the caller's deadline holds against one that never stops
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.open = False
                return
            room = max(0, _SAID_MAX - len(self.said))
            self.said += chunk[:room]
            self.dropped += len(chunk) - len(chunk[:room])

    def report(self) -> None:
        if self.open:
            self.drain()
        if self.said or self.dropped:
            more = f" (and {self.dropped} bytes more)" if self.dropped else ""
            log.info("the thumbnail decoder said: %s%s", display(self.said.decode("utf-8", "replace")), more)
            self.said, self.dropped = bytearray(), 0


def _ready(fd: int, event: int, deadline: float, stderr: _Stderr | None = None) -> bool:
    """`fd` readable or writable (or closed at the other end) before `deadline`, `stderr` read
    meanwhile — poll, not select: the GUI's descriptors may number above 1023, which select
    refuses."""
    poller = select.poll()
    poller.register(fd, event)
    if stderr is not None and stderr.open:
        poller.register(stderr.fd, select.POLLIN)
    while True:
        events = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        if not events:
            return False
        if stderr is None or any(f == fd for f, _ in events):
            return True
        stderr.drain()
        if not stderr.open:
            poller.unregister(stderr.fd)


def _send(fd: int, data: bytes, deadline: float, stderr: _Stderr | None = None) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        if not _ready(fd, select.POLLOUT, deadline, stderr):
            raise TimeoutError("the image not taken in time")
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _read(fd: int, deadline: float | None, limit: int | None = None,
          stderr: _Stderr | None = None) -> tuple[bytes, bytes]:
    kind, n = _HEAD.unpack(_exactly(fd, _HEAD.size, deadline, stderr))
    if limit is not None and n > limit:
        raise ValueError(f"an answer of {n} bytes (at most {limit})")
    return kind, _exactly(fd, n, deadline, stderr)


def _exactly(fd: int, n: int, deadline: float | None, stderr: _Stderr | None = None) -> bytes:
    out = bytearray()
    while len(out) < n:
        if deadline is not None and not _ready(fd, select.POLLIN, deadline, stderr):
            raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError("end of the pipe")
        out += chunk
    return bytes(out)


def _serve() -> int:
    from PIL import Image  # deferred: only the decoder process loads Pillow

    # it ends at the end of its stdin: when the GUI exits, or is killed, the kernel closes the GUI's
    # end. No PR_SET_PDEATHSIG: it follows the *thread* that started the process, and the GUI asks
    # for thumbnails from pool threads — a thread that ended killed the decoder under the next
    # image, which then kept "no thumbnail" for good (and one taken over can unset it anyway)
    Image.init()  # every plugin imported before the walls go up
    make(b"")  # and what a first decode imports lazily
    landlock.limit_memory(int(sys.argv[1]) if len(sys.argv) > 1 else MEMORY_MB)
    landlock.confine_reader()
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        try:
            _kind, data = _read(fd_in, None)
        except EOFError:
            return 0
        jpeg, why = make(data)
        kind = b"J" if jpeg is not None else b"M" if why == _OUT_OF_MEMORY else b"N"
        payload = jpeg if jpeg is not None else b"" if why == _OUT_OF_MEMORY else why.encode()
        os.write(fd_out, _HEAD.pack(kind, len(payload)))
        view = memoryview(payload)
        while view:
            view = view[os.write(fd_out, view):]


if __name__ == "__main__":
    sys.exit(_serve())
