"""The private Redis of the embedded default: unix socket only, append-only file on."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from fsd.base.errors import ExitCode, HoardError
from fsd.base.proc import run, which

MAX_SOCKET_PATH = 100  # sun_path is 108 bytes including the NUL


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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
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
        raise HoardError(f"Redis did not answer on {self.socket} within 20 s; see {self.data_dir / 'redis.log'}",
                         ExitCode.UNAVAILABLE)

    def stop(self) -> bool:
        if not self.is_running():
            return False
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # shutdown closes the connection under us
        return True
