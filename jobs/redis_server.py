"""The private Redis of the embedded default: unix socket only, append-only file on."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import redis

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.modes import ensure_dir
from hoardfs.base.proc import run, which

MAX_SOCKET_PATH = 100  # sun_path is 108 bytes including the NUL

log = logging.getLogger(__name__)


class PrivateRedis:
    def __init__(self, data_dir: Path, socket: Path) -> None:
        self.data_dir = data_dir
        self.socket = socket
        if len(str(socket)) > MAX_SOCKET_PATH:
            raise HoardError(f"Redis socket path {socket} is longer than {MAX_SOCKET_PATH} bytes; "
                             "move the checkout to a shorter path or set embedded.root", ExitCode.USAGE)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=2)

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> bool:
        if self.is_running():
            return False
        ensure_dir(self.data_dir)  # 0750: the append-only file holds every job's arguments
        ensure_dir(self.socket.parent)
        self.socket.unlink(missing_ok=True)
        self.drop_zero_tails()
        run([which("redis-server", "redis-server"),
             "--daemonize", "yes", "--port", "0",
             "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.data_dir), "--pidfile", str(self.data_dir / "redis.pid"),
             "--logfile", str(self.data_dir / "redis.log"),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            f"starting Redis (log: {self.data_dir / 'redis.log'})")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.is_running():
                return True
            time.sleep(0.05)
        raise HoardError(f"Redis did not answer on {self.socket} within 20 s; see {self.data_dir / 'redis.log'} (if "
                         "it says 'Bad file format reading the append only file': copy the append-only directory "
                         "aside, then `redis-check-aof --fix` on its manifest)", ExitCode.UNAVAILABLE)

    def drop_zero_tails(self) -> list[tuple[Path, int]]:
        """Cut the NUL bytes off the end of Redis's append-only files; returns (file, bytes cut).
        A power loss leaves them when a file's new size reached the disk before its last pages
        did (ext4 commits the size of an append into an allocated block with its journal, every
        5 s; the pages follow at writeback): Redis fsyncs once a second (`appendfsync everysec`),
        so its last second of appends can come back as zeros, and Redis refuses such a file
        ("Bad file format"), where a file that merely ends early it loads (aof-load-truncated).
        No append-only file ends in a NUL — every command ends with CRLF — so what is cut held
        nothing; a command cut short before the zeros is then dropped by Redis itself."""
        out = []
        for f in sorted((self.data_dir / "appendonlydir").glob("*.aof")) + [self.data_dir / "appendonly.aof"]:
            try:
                fd = os.open(f, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                size = end = os.fstat(fd).st_size
                while end > 0:
                    piece = os.pread(fd, min(end, 1 << 16), end - min(end, 1 << 16))
                    kept = len(piece.rstrip(b"\0"))
                    end -= len(piece) - kept
                    if kept:
                        break
                if end < size:
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                    out.append((f, size - end))
                    log.warning("Redis: cut %d NUL bytes off the end of %s, left by a power loss before Redis synced "
                                "them (its appends of that last second are lost)", size - end, f)
            finally:
                os.close(fd)
        return out

    def stop(self) -> bool:
        if not self.is_running():
            return False
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # shutdown closes the connection under us
        return True
