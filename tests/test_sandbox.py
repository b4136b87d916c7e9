"""The code that reads hostile scraped input runs confined by Landlock (docs/security.md,
"Sandboxed parsers"): the ingest parser writes nowhere and reads only its batch (and Python's
files), a built-in action writes only below its output root; where the kernel has no Landlock
both still run and `hoard health` warns once. Every sandbox here is a real process confined by
the real kernel; a kernel without Landlock is this kernel behind a seccomp filter that answers
Landlock's calls as such a kernel does (tests/nolandlock.py)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import json
import os
import resource
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from hoardfs.adapters import FORMATS, parse_batch
from hoardfs.adapters.isolated import answer as parse_isolated_answer
from hoardfs.adapters.isolated import parse_isolated
from hoardfs.adapters.records import record_json
from hoardfs.base import landlock
from hoardfs.base.errors import HoardError
from hoardfs.base.proc import ended
from hoardfs.fsd.outputs.thumb_decoder import Decoder
from tests.helpers import REPO, missing
from tests.nolandlock import UNSUPPORTED
from tests.test_adapter_fuzz import CASES
from tests.test_ingest import ingest_home

pytestmark = pytest.mark.services  # every test starts Python processes (the sandboxed ones)

NOLANDLOCK = [sys.executable, str(REPO / "tests" / "nolandlock.py")]


@pytest.fixture
def landlock_support() -> None:
    """Skip loudly (fail in CI) where this kernel has no usable Landlock."""
    st = landlock.status()
    if not st["enforced"]:
        missing(f"LANDLOCK UNAVAILABLE: {st['reason']}")


def _inside(script: str, *, prefix: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Run `script` (which prints one JSON document last) in a new Python process (`env`: added
    to this one's environment)."""
    res = subprocess.run([*(prefix or []), sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                         text=True, cwd=REPO, timeout=120, env=os.environ | (env or {}))
    if res.returncode == UNSUPPORTED and prefix:
        missing(f"SECCOMP UNAVAILABLE: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


TRY = '''
import errno, json, os, subprocess
def attempt(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno
'''


def test_the_parser_writes_nowhere_reads_only_its_batch_and_starts_nothing(tmp_path: Path,
                                                                          landlock_support) -> None:
    """`confine_parser(batch)` — what the ingest's parser process does before it reads a byte:
    creating, writing, truncating or removing a file anywhere (the batch itself, 3A's quarantine,
    the SSD) is EACCES, as is reading a file beside the batch (a config with the database's
    password) or starting a program; the batch's documents read and parse as before."""
    zone3a = tmp_path / "3A"
    batch = zone3a / "b1"
    batch.mkdir(parents=True)
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    (zone3a / "_quarantine").mkdir()
    (tmp_path / "hoard.toml").write_text('database_url = "postgresql://hoard:secret@db/hoard"\n')
    got = _inside(TRY + f'''
from pathlib import Path
from hoardfs.adapters import FORMATS, parse_batch
from hoardfs.adapters.isolated import confine_parser
batch, zone3a, home = {str(batch)!r}, {str(zone3a)!r}, {str(tmp_path)!r}
assert confine_parser(batch)
out = {{
    "new file in the batch": attempt(lambda: open(batch + "/x", "w")),
    "write a document": attempt(lambda: open(batch + "/v.info.json", "r+")),
    "truncate a document": attempt(lambda: os.truncate(batch + "/v.info.json", 0)),
    "remove a document": attempt(lambda: os.unlink(batch + "/v.mp4")),
    "rename a document": attempt(lambda: os.rename(batch + "/v.mp4", batch + "/w.mp4")),
    "into quarantine": attempt(lambda: os.rename(batch + "/v.mp4", zone3a + "/_quarantine/v.mp4")),
    "mkdir in 3A": attempt(lambda: os.mkdir(zone3a + "/other")),
    "write /tmp": attempt(lambda: open("/tmp/hoard-sandbox-test", "w")),
    "read the config": attempt(lambda: open(home + "/hoard.toml").read()),
    "list the SSD": attempt(lambda: os.listdir(home)),
    "start a program": attempt(lambda: subprocess.run(["/bin/true"])),
    "read the batch": attempt(lambda: open(batch + "/v.info.json").read()),
}}
parsed, view = parse_batch(Path(batch), FORMATS["ytdlp"]("ytdlp"))
out["records"] = [r.title for r in parsed.records]
print(json.dumps(out))
''')
    assert got.pop("records") == ["t"]
    assert got.pop("read the batch") == 0
    # a truncate: Landlock from ABI 3 on (Linux 6.2), the seccomp filter `confine` adds below it
    assert got == dict.fromkeys(got, errno.EACCES), got
    assert sorted(p.name for p in batch.iterdir()) == ["v.info.json", "v.mp4"]
    assert not Path("/tmp/hoard-sandbox-test").exists()


def test_a_builtin_worker_writes_only_below_its_output_root(tmp_path: Path, landlock_support) -> None:
    """`hoard-builtin`'s `_io.confine(output_root, input_root)`: below the output root the worker
    creates, renames across directories (keyframes moves its scratch into place) and removes; a
    file of the input root, 3C beside the run, the run's other directories and /tmp are EACCES,
    and so is starting a program it was not given (keyframes is given ffmpeg and ffprobe)."""
    run = tmp_path / "3C" / "run1"
    inp, out = run / "flat" / "input", run / "flat" / "output"
    inp.mkdir(parents=True)
    out.mkdir(parents=True)
    (inp / "a.jpg").write_bytes(b"\xff\xd8\xff")
    got = _inside(TRY + f'''
from pathlib import Path
from hoardfs.jobs.actions.builtin import _io
inp, out, run = {str(inp)!r}, {str(out)!r}, {str(run)!r}
assert _io.confine(Path(out), Path(inp))
os.mkdir(out + "/.work")
open(out + "/.work/t.png", "w").write("x")
res = {{
    "write below the output root": attempt(lambda: _io.write_bytes(Path(out), "thumbs/x.jpg", b"jpeg")),
    "move the scratch into place": attempt(lambda: _io.move_into(Path(out), "scenes/a/f.png", Path(out + "/.work/t.png"))),
    "remove the scratch": attempt(lambda: os.rmdir(out + "/.work")),
    "read the input": attempt(lambda: open(inp + "/a.jpg", "rb").read()),
    "write the input": attempt(lambda: open(inp + "/a.jpg", "r+b")),
    "remove the input": attempt(lambda: os.unlink(inp + "/a.jpg")),
    "write beside the run": attempt(lambda: open(run + "/../other", "w")),
    "write the run directory": attempt(lambda: open(run + "/log", "w")),
    "write /tmp": attempt(lambda: open("/tmp/hoard-sandbox-test", "w")),
    "start a shell": attempt(lambda: subprocess.run(["sh", "-c", "echo x > /tmp/hoard-sandbox-test"])),
}}
print(json.dumps(res))
''')
    ok = ("write below the output root", "move the scratch into place", "remove the scratch", "read the input")
    assert {k: got.pop(k) for k in ok} == dict.fromkeys(ok, 0)
    assert got == dict.fromkeys(got, errno.EACCES), got
    assert (out / "thumbs" / "x.jpg").read_bytes() == b"jpeg" and (out / "scenes" / "a" / "f.png").exists()
    assert (inp / "a.jpg").exists() and not (run / "log").exists() and not (run.parent / "other").exists()
    assert not Path("/tmp/hoard-sandbox-test").exists()


#: what a process taken over tries, to hand what it read to another local user with no file:
#: System V shared memory (a new segment, and one another process made), a message queue, a
#: semaphore set, a POSIX message queue, the kernel's keyrings
IPC = '''
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def c(fn, *args, fail=-1, undo=None):
    """`fn(*args)` as an OSError where it fails; where it does not, what it made is removed again
    (`undo(result)`): a test on a kernel that lets it through leaves nothing behind."""
    def go():
        got = fn(*args)
        if got == fail:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if undo:
            undo(got)
    return go
def ipc(segment, add_key):
    return {"shmget": attempt(c(libc.shmget, 0, 4096, 0o1666, undo=lambda i: libc.shmctl(i, 0, None))),
            "shmat another's segment": attempt(c(libc.shmat, segment, None, 0, fail=ctypes.c_void_p(-1).value,
                                                 undo=lambda a: libc.shmdt(ctypes.c_void_p(a)))),
            "msgget": attempt(c(libc.msgget, 0, 0o1666, undo=lambda i: libc.msgctl(i, 0, None))),
            "semget": attempt(c(libc.semget, 0, 1, 0o1666, undo=lambda i: libc.semctl(i, 0, 0))),
            "mq_open": attempt(c(libc.mq_open, b"/hoard-sandbox-test", os.O_CREAT | os.O_RDWR, 0o666, None,
                                 undo=lambda fd: (os.close(fd), libc.mq_unlink(b"/hoard-sandbox-test")))),
            "add_key": attempt(c(libc.syscall, add_key, b"user", b"hoard-sandbox-test", b"x", 1, -3,
                                 undo=lambda k: libc.syscall(add_key + 2, 9, k, -3))),  # KEYCTL_UNLINK
            "keyctl": attempt(c(libc.syscall, add_key + 2, 0, -3, 0))}
'''
#: add_key(2)'s number (keyctl(2) is 2 more) on the machines the tests run on
ADD_KEY = {"x86_64": 248, "aarch64": 217}


@pytest.fixture
def segment() -> Iterator[int]:
    """A System V shared memory segment of this process, mode 0666 (as a taken-over worker made
    one for `nobody` to read): its id, removed afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(0, 4096, 0o1666)
    if shmid < 0:
        missing(f"NO SYSTEM V SHARED MEMORY HERE ({os.strerror(ctypes.get_errno())})")
    try:
        yield shmid
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def _embedded_home(home: Path) -> tuple[Path, Path, dict[str, str]]:
    """The embedded default's layout below `home`: hoard.toml beside `var/ssd`, the GUI's cookie
    key, users and API tokens in `var/ssd/state/gui`, a run's roots in 3C (an image in the input
    root). (the input root, the output root, each secret file → its text)."""
    ssd = home / "var" / "ssd"
    gui = ssd / "state" / "gui"
    gui.mkdir(parents=True)
    for zone in ("3A", "3B", "3C", "3D"):
        (ssd / zone).mkdir()
    found = {str(gui / "secret"): "cookie-key-5e1f0c9a", str(gui / "users.json"): '{"admin": "pbkdf2-7c1d"}',
             str(gui / "tokens.json"): '{"scraper": "tok-0b9e33"}',
             str(home / "hoard.toml"): '[ssd]\nroot = "var/ssd"\ndatabase_url = "postgresql://hoard:pw-41d2@db/h"\n'}
    for path, text in found.items():
        Path(path).write_text(text)
    flat = ssd / "3C" / "run1" / "flat"
    inp, out = flat / "input", flat / "output"
    inp.mkdir(parents=True)
    Image.new("RGB", (64, 48), (10, 200, 30)).save(inp / "a.jpg")
    return inp, out, found


#: a built-in taken over by its input: `hoard-builtin thumbnail` as the worker runs it
#: (`hoardfs.jobs.actions.builtin.main`: its checks, `_io.confine`, then the program), the program's
#: `run` being what a decoder bug lets the input do — read the service's secrets, hand them out
#: through System V IPC, its result file and signals
BUILTIN_TAKEN_OVER = TRY + IPC + '''
import sys
from hoardfs.base import landlock
from hoardfs.jobs.actions.builtin import _io, main, thumbnail
SECRETS, STATE, SEGMENT, ADD_KEY, SERVICE, INPUT, OUTPUT = sys.argv[1:]
got = {}
def payload(input_root, output_root, args):
    stolen = []
    for path in SECRETS.split(","):
        got["read " + os.path.basename(path)] = attempt(lambda: stolen.append(open(path).read()))
    got["list state"] = attempt(lambda: os.listdir(STATE))
    got["read its input"] = attempt(lambda: open(os.path.join(input_root, "a.jpg"), "rb").read())
    got.update(ipc(int(SEGMENT), int(ADD_KEY)))
    got["signal the service"] = attempt(lambda: os.kill(int(SERVICE), signal.SIGTERM))
    got["signal every process"] = attempt(lambda: os.kill(-1, 0))  # 0: the check alone, nothing sent
    got["leave its session"] = attempt(os.setsid)
    got["leave its group"] = attempt(lambda: os.setpgid(0, 0))
    raised = []
    signal.signal(signal.SIGUSR1, lambda *_: raised.append(1))
    got["signal itself"] = attempt(lambda: signal.raise_signal(signal.SIGUSR1)) or (0 if raised else "not delivered")
    got["signal its own group"] = attempt(lambda: os.kill(0, 0))
    _io.write_jsonl(output_root, "labels.jsonl", [{"label": text} for text in stolen])
    return 0
thumbnail.run = payload
code = main(["thumbnail", INPUT, OUTPUT])
print(json.dumps({"exit": code, "abi": landlock.abi(), **got}))
'''


@pytest.mark.parametrize("abi", [None, "2"], ids=["this-kernel", "abi-2"])
def test_a_builtin_taken_over_reads_no_secret_and_hands_nothing_out(tmp_path: Path, abi: str | None, segment: int,
                                                                     landlock_support) -> None:
    """`hoard-builtin` confined as it runs (`main` → `_io.confine`), its program taken over by an
    input: the GUI's cookie key, users and tokens in the SSD's `state/` and hoard.toml beside it
    are EACCES (its input reads), so its result file carries none of them to a viewer; System V
    shared memory (a new segment, another's 0666 one), message queues, semaphores, POSIX queues
    and keyrings are EPERM; signalling a service process or every process, setsid and setpgid
    are EPERM — also with the kernel taken for Debian 12's Landlock ABI 2 (no signal scoping),
    where it still signals itself and its own group."""
    inp, out, found = _embedded_home(tmp_path)
    service = subprocess.Popen(["sleep", "60"])  # a process of the service's user (the mount, the GUI)
    try:
        script = [sys.executable, "-c", BUILTIN_TAKEN_OVER, ",".join(found), str(tmp_path / "var" / "ssd" / "state"),
                  str(segment), str(ADD_KEY[os.uname().machine]), str(service.pid), str(inp), str(out)]
        res = subprocess.run(script, capture_output=True, text=True, cwd=REPO, timeout=120,
                             env=os.environ | ({landlock.TEST_ABI: abi} if abi else {}))
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout.splitlines()[-1])
        assert service.poll() is None, "the service's process was signalled"
    finally:
        service.kill()
        service.wait()
    assert got.pop("exit") == 0 and got.pop("abi") == (int(abi) if abi else landlock.abi()), got
    # kill(-1) answers 0 when every process it tried refused it (Landlock's scope from ABI 6):
    # only the seccomp filter below ABI 6 says EPERM
    every = got.pop("signal every process")
    assert abi is None or every == errno.EPERM, every
    assert {k: got.pop(k) for k in ("read its input", "signal itself", "signal its own group")} == \
        {"read its input": 0, "signal itself": 0, "signal its own group": 0}
    reads = {k: got.pop(k) for k in list(got) if k.startswith(("read ", "list "))}
    assert reads == dict.fromkeys(reads, errno.EACCES) and len(reads) == len(found) + 1, reads
    assert got == dict.fromkeys(got, errno.EPERM), got
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()) + res.stdout.encode() + res.stderr.encode()
    assert (out / "labels.jsonl").read_text() == ""  # nothing read, nothing told
    assert not any(text.encode() in written for text in found.values())


def test_the_parser_reads_no_secret_and_hands_nothing_out(tmp_path: Path, segment: int, landlock_support) -> None:
    """The ingest's parser (`confine_parser`, its batch in 3A of the embedded layout): the SSD's
    `state/` and hoard.toml are EACCES, System V IPC, message queues and keyrings EPERM — a
    document that takes it over has nothing to read and no way to leave it for another user."""
    _inp, _out, found = _embedded_home(tmp_path)
    batch = tmp_path / "var" / "ssd" / "3A" / "b1"
    batch.mkdir()
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    got = _inside(TRY + IPC + f'''
from hoardfs.adapters.isolated import confine_parser
assert confine_parser({str(batch)!r})
out = {{"read " + p: attempt(lambda: open(p).read()) for p in {sorted(found)!r}}}
out.update(ipc({segment}, {ADD_KEY[os.uname().machine]}))
print(json.dumps(out))
''')
    reads = {k: got.pop(k) for k in list(got) if k.startswith("read ")}
    assert reads == dict.fromkeys(reads, errno.EACCES) and len(reads) == len(found), reads
    assert got == dict.fromkeys(got, errno.EPERM), got


def test_a_builtin_whose_rules_would_reach_the_services_secrets_is_refused(tmp_path: Path, landlock_support) -> None:
    """A built-in given the SSD itself as its input root (its `state/` below it) — Landlock only
    allows, so a rule there could not keep the cookie key out — refuses to run in one line
    naming the secret, exit 2, and writes nothing."""
    _inp, out, _found = _embedded_home(tmp_path)
    ssd = tmp_path / "var" / "ssd"
    res = subprocess.run([sys.executable, "-m", "hoardfs.jobs.actions.builtin", "thumbnail", str(ssd), str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.count("\n") == 1 and str(ssd / "state") in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert list(out.iterdir()) == []


def _result(parsed, view, records=None) -> dict:
    return {"records": records if records is not None else [record_json(r) for r in parsed.records],
            "rejects": sorted((tuple(r.paths), r.reason) for r in parsed.rejects),
            "claimed": sorted(parsed.claimed), "files": view.files,
            "identity": {k: tuple(v) for k, v in view.identity.items()}}


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_the_sandboxed_parse_gives_what_the_in_process_parse_gives(tmp_path: Path, case: int) -> None:
    """Every format's batch — one good document, and one broken (truncated JSON) beside it — parsed
    in the sandboxed child gives the records, rejects (the broken document, with its reason),
    claimed files and screen identities the in-process parse gives: the write-intent, a function
    of these and the store's digests, and so the database rows, are the same."""
    fmt, victim, doc, rest = CASES[case]
    root = tmp_path / "b1"
    root.mkdir()
    for rel, body in rest.items():
        (root / rel).write_bytes(body)
    (root / victim).write_bytes(json.dumps(doc).encode()[:-3])  # truncated: a BadDocument
    adapter = FORMATS[fmt](fmt)
    before = _result(*parse_batch(root, adapter))
    assert before["records"] and any(victim in paths for paths, _ in before["rejects"]), before["rejects"]
    assert _result(*parse_isolated(root, adapter)) == before


def test_a_batch_directory_swapped_for_a_link_is_refused_by_the_sandboxed_parse(tmp_path: Path) -> None:
    """The screen's refusal comes back from the child as the line the in-process screen gives,
    with its exit code (not a parser crash)."""
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "v.info.json").write_text("{}")
    (tmp_path / "b1").symlink_to(real)
    with pytest.raises(HoardError) as before:
        parse_batch(tmp_path / "b1", FORMATS["ytdlp"]("ytdlp"))
    with pytest.raises(HoardError, match="nothing of it was read") as e:
        parse_isolated(tmp_path / "b1", FORMATS["ytdlp"]("ytdlp"))
    assert (e.value.message, e.value.exit_code) == (before.value.message, before.value.exit_code)


@pytest.mark.parametrize("answer,reason", [("ENOSYS", "built without Landlock"), ("EOPNOTSUPP", "not enabled at boot")])
def test_a_kernel_without_landlock_parses_unconfined_and_says_why(tmp_path: Path, answer: str, reason: str) -> None:
    """On a kernel without Landlock (or with it not enabled) nothing fails: the parser child
    runs unconfined and gives its records, `confine` says False, and `status` names the reason
    and the next step."""
    batch = tmp_path / "b1"
    batch.mkdir()
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    got = _inside(f'''
import json, os
from pathlib import Path
from hoardfs.adapters import FORMATS
from hoardfs.adapters.isolated import parse_isolated
from hoardfs.base import landlock
_, _, records = parse_isolated(Path({str(batch)!r}), FORMATS["ytdlp"]("ytdlp"))
print(json.dumps({{"status": landlock.status(), "confined": landlock.confine(write=[{str(tmp_path)!r}]),
                  "records": [r["title"] for r in records], "tmp": os.access("/tmp", os.W_OK)}}))
''', prefix=[*NOLANDLOCK, answer, "--"])
    assert got["records"] == ["t"] and got["confined"] is False and got["tmp"] is True
    assert got["status"]["enforced"] is False and got["status"]["abi"] == 0
    assert reason in got["status"]["reason"] and got["status"]["next_step"]


def test_health_warns_once_where_the_kernel_has_no_landlock(hoard_home: Path, pg) -> None:
    """`hoard health` on a kernel without Landlock: one warning line naming what runs without
    it and the next step — a warning, not a problem: the exit code is the one health gives with
    Landlock (this test home has other problems: no backup, no schema); with Landlock: no such
    warning and the ABI in --json and in its text."""
    cfg = ingest_home(hoard_home, pg)
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "health"]
    res = subprocess.run([*NOLANDLOCK, "ENOSYS", "--", *hoard, "--json"], capture_output=True, text=True, cwd=REPO)
    if res.returncode == UNSUPPORTED:
        missing(f"SECCOMP UNAVAILABLE: {res.stderr.strip()}")
    report = json.loads(res.stdout)
    assert not [p for p in report["problems"] if "andlock" in p], report["problems"]
    lines = [w for w in report["warnings"] if w.startswith("sandbox:")]
    assert len(lines) == 1 and "without Landlock" in lines[0] and "CONFIG_SECURITY_LANDLOCK" in lines[0], lines
    sandbox = report["sandbox"]
    assert (sandbox["abi"], sandbox["enforced"], sandbox["reason"]) == (0, False, "this kernel was built without Landlock")
    assert "CONFIG_SECURITY_LANDLOCK=y" in sandbox["next_step"]
    text = subprocess.run([*NOLANDLOCK, "ENOSYS", "--", *hoard], capture_output=True, text=True, cwd=REPO)
    assert text.returncode == res.returncode and "warning: sandbox: this kernel was built without Landlock" in \
        " ".join(text.stderr.split()), text.stderr
    if landlock.status()["enforced"]:
        confined = subprocess.run([*hoard, "--json"], capture_output=True, text=True, cwd=REPO)
        assert confined.returncode == res.returncode, confined.stderr
        plain = json.loads(confined.stdout)
        assert plain["problems"] == report["problems"]
        assert plain["sandbox"]["enforced"] is True and plain["sandbox"]["abi"] == landlock.abi()
        assert not [w for w in plain["warnings"] if w.startswith("sandbox:")]
        text = subprocess.run(hoard, capture_output=True, text=True, cwd=REPO)
        assert f"sandbox:  Landlock ABI {landlock.abi()}" in text.stdout, text.stdout


def test_landlock_without_seccomp_parses_behind_landlock_alone_and_health_says_so(tmp_path: Path, hoard_home: Path,
                                                                                  pg, landlock_support) -> None:
    """A kernel with Landlock that installs no seccomp filter (built without
    CONFIG_SECCOMP_FILTER; tests/nolandlock.py NOSECCOMP): `confine` failed on its first filter,
    so every batch failed as "a bug" while `hoard health` said the sandbox was enforced. The
    parser now runs behind Landlock alone — it parses, its writes are still EACCES, a socket
    opens — and health judges the same fact by the same confined child: not enforced, landlock
    true, seccomp false, one warning naming what is open and a next step."""
    batch = tmp_path / "b1"
    batch.mkdir()
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    got = _inside(TRY + f'''
import socket
from pathlib import Path
from hoardfs.adapters import FORMATS
from hoardfs.adapters.isolated import confine_parser, parse_isolated
from hoardfs.base import landlock
_, _, records = parse_isolated(Path({str(batch)!r}), FORMATS["ytdlp"]("ytdlp"))
status = landlock.status()
confined = confine_parser({str(batch)!r})
print(json.dumps({{"records": [r["title"] for r in records], "status": status, "confined": confined,
                  "write the batch": attempt(lambda: open({str(batch)!r} + "/x", "w")),
                  "a socket": attempt(lambda: socket.socket(socket.AF_UNIX).close())}}))
''', prefix=[*NOLANDLOCK, "NOSECCOMP", "--"])
    assert got["records"] == ["t"] and got["confined"] is True
    assert (got["write the batch"], got["a socket"]) == (errno.EACCES, 0), got
    st = got["status"]
    assert (st["enforced"], st["landlock"], st["seccomp"]) == (False, True, False), st
    assert "seccomp" in st["reason"] and "CONFIG_SECCOMP_FILTER=y" in st["next_step"] and "sockets" in st["effect"]
    cfg = ingest_home(hoard_home, pg)
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "health", "--json"]
    res = subprocess.run([*NOLANDLOCK, "NOSECCOMP", "--", *hoard], capture_output=True, text=True, cwd=REPO)
    report = json.loads(res.stdout)
    assert report["sandbox"] == st
    lines = [w for w in report["warnings"] if w.startswith("sandbox:")]
    assert len(lines) == 1 and "Landlock's file walls alone" in lines[0] and "CONFIG_SECCOMP_FILTER" in lines[0], lines
    assert not [p for p in report["problems"] if p.startswith("sandbox:")], report["problems"]


def test_the_thumbnail_decoder_writes_nothing_and_reads_only_python(tmp_path: Path, landlock_support) -> None:
    """The GUI's decoder process (hoardfs.fsd.outputs.thumb_decoder) behind `confine_reader()`: Pillow
    still decodes what comes over the pipe, while writing anywhere, reading the SSD's files
    (the GUI's users file) and starting a program are EACCES."""
    (tmp_path / "users.json").write_text('{"admin": "$argon2id$…"}')
    got = _inside(TRY + f'''
import io
from PIL import Image
from hoardfs.fsd.outputs import thumb_decoder
Image.init()
thumb_decoder.make(b"")
from hoardfs.base import landlock
assert landlock.confine_reader()
buf = io.BytesIO()
Image.new("RGB", (640, 480), (10, 200, 30)).save(buf, "PNG")
jpeg, why = thumb_decoder.make(buf.getvalue())
print(json.dumps({{
    "thumbnail": Image.open(io.BytesIO(jpeg)).size,
    "write /tmp": attempt(lambda: open("/tmp/hoard-sandbox-test", "w")),
    "write beside": attempt(lambda: open({str(tmp_path)!r} + "/x", "w")),
    "read the users": attempt(lambda: open({str(tmp_path)!r} + "/users.json").read()),
    "start a program": attempt(lambda: subprocess.run(["/bin/true"])),
}}))
''')
    assert got.pop("thumbnail") == [256, 192]
    assert got == dict.fromkeys(got, errno.EACCES), got


def test_the_gui_decodes_in_a_process_of_its_own(tmp_path: Path) -> None:
    """`Decoder.thumbnail` answers from another process: a real image's JPEG, nothing (and no
    reason) for bytes that are no image, and a new process after the old one was killed."""
    buf = io.BytesIO()
    Image.new("RGB", (1000, 500), (200, 10, 10)).save(buf, "JPEG")
    dec = Decoder()
    try:
        jpeg, why = dec.thumbnail(buf.getvalue())
        assert why == "" and jpeg is not None and Image.open(io.BytesIO(jpeg)).size == (256, 128)
        first = dec._proc
        assert first is not None and first.pid != os.getpid()
        assert dec.thumbnail(b"<html>not an image</html>") == (None, "")
        first.kill()
        first.wait()
        jpeg, _ = dec.thumbnail(buf.getvalue())
        assert jpeg is not None and dec._proc is not None and dec._proc.pid != first.pid
    finally:
        dec.close()


def test_a_parser_that_lies_sends_the_ingest_nowhere_outside_its_batch(tmp_path: Path) -> None:
    """The child read the hostile bytes, so its answer is checked before the ingest acts on it
    (`hoardfs.adapters.isolated.answer`): naming a file outside the batch (a `..` path, a link out of
    it, a file under a linked directory), another file's identity, a claimed file it never
    screened or a rejected path that climbs out refuses the batch in one line (exit 5) — the
    store step would have stored the named file as the service, the quarantine moved it. The
    real child's answer for the same batch passes; a reason it gives is shown as one line."""
    secret = tmp_path / "users.json"
    secret.write_text('{"admin": "$argon2id$…"}')
    batch = tmp_path / "3A" / "b1"
    (batch / "sub").mkdir(parents=True)
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    (batch / "out").symlink_to(secret)
    (batch / "ldir").symlink_to(tmp_path, target_is_directory=True)
    adapter = FORMATS["ytdlp"]("ytdlp")
    cmd = [sys.executable, "-P", "-s", "-m", "hoardfs.adapters.isolated", "ytdlp", "ytdlp", "0.0", str(batch)]
    honest = json.loads(subprocess.run(cmd, capture_output=True, check=True, cwd=REPO).stdout)
    parsed, view, records = parse_isolated_answer(batch, adapter, honest)
    assert sorted(view.files) == ["v.info.json", "v.mp4"] and records
    assert sorted(r.paths for r in parsed.rejects) == [["ldir"], ["out"]]  # the screen refuses both links

    def st(p: Path) -> list[int]:
        s = p.stat()
        return [s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns]

    def lying(**change) -> dict:
        doc = json.loads(json.dumps(honest))
        for key, value in change.items():
            doc[key] = value if not callable(value) else value(doc[key])
        return doc

    lies = {
        "a path that climbs out": lying(files=lambda f: {**f, "../../users.json": 9},
                                        identity=lambda i: {**i, "../../users.json": st(secret)}),
        "a link out of the batch": lying(files=lambda f: {**f, "out": 9}, identity=lambda i: {**i, "out": st(secret)},
                                         claimed=lambda c: [*c, "out"], rejects=[]),
        "a file under a linked directory": lying(files=lambda f: {**f, "ldir/users.json": 9},
                                                 identity=lambda i: {**i, "ldir/users.json": st(secret)}),
        "another file's identity": lying(identity=lambda i: {**i, "v.mp4": st(secret)}),
        "a claimed file never screened": lying(claimed=lambda c: [*c, "users.json"]),
        "a rejected path that climbs out": lying(rejects=[[["../../users.json"], "bad"]]),
        # the quota check of 3B reads the size, the store the identity: a media file of 0 bytes
        "a size the identity does not say": lying(files=lambda f: {**f, "v.mp4": 0}),
        "a file claimed and rejected": lying(rejects=lambda r: [*r, [["v.mp4"], "bad"]]),
    }
    for what, doc in lies.items():
        with pytest.raises(HoardError, match=r"parser of batch b1 named .* nothing of the batch was taken") as e:
            parse_isolated_answer(batch, adapter, doc)
        assert e.value.exit_code == 5, what
    assert secret.read_text().startswith('{"admin"')
    parsed, _, _ = parse_isolated_answer(batch, adapter, lying(rejects=[[["out"], "bad\n\x1b[2Jfake line"]]))
    assert [r.reason for r in parsed.rejects] == ["bad\\x0a\\x1b[2Jfake line"]  # one line, no escape sequence


LIAR = '''
import struct, sys
head = sys.stdin.buffer.read(9)
sys.stdin.buffer.read(struct.unpack(">cQ", head)[1])
answer = {answer!r}
sys.stdout.buffer.write(answer)
sys.stdout.buffer.flush()
if {wait}:  # stays (as a decoder does) — or dies mid-answer
    sys.stdin.buffer.read()
'''


@pytest.mark.parametrize("answer,wait,why", [
    (b"J" + (8).to_bytes(8, "big") + b"<svg/on>", True, "not a JPEG"),
    (b"J" + (1 << 40).to_bytes(8, "big"), True, "an answer of 1099511627776 bytes"),
    (b"J" + (100).to_bytes(8, "big") + b"\xff\xd8\xff", False, "EOFError"),
])
def test_a_decoder_made_to_lie_gives_the_gui_no_thumbnail(answer: bytes, wait: bool, why: str) -> None:
    """The GUI takes from its decoder process only a JPEG of bounded size: a decoder that Pillow's
    hostile input took over and that answers markup, announces a terabyte or dies mid-answer
    gives no thumbnail (and is replaced), never bytes the GUI would serve or hold."""
    dec = Decoder([sys.executable, "-c", LIAR.format(answer=answer, wait=wait)])
    try:
        jpeg, reason = dec.thumbnail(b"\xff\xd8\xff\xe0 any image")
        assert jpeg is None and why in reason, reason
        assert dec._proc is None  # killed and forgotten: the next image gets a new process
    finally:
        dec.close()


def test_below_abi_3_truncate_is_refused_by_seccomp(tmp_path: Path) -> None:
    """Landlock refuses `truncate(2)` of a path only from ABI 3 (Linux 6.2); on Debian 12's 6.1
    (ABI 2) `confine` adds the seccomp filter `refuse_syscalls` installs here: a truncate of a
    file the uid may write (a shard) is EACCES, its bytes stay; reading and writing below the
    allowed paths go on. (Run here on its own: this kernel's ABI may be newer.)"""
    shard = tmp_path / "shard"
    shard.write_bytes(b"x" * 4096)
    got = _inside(TRY + f'''
import ctypes, errno
from hoardfs.base.landlock import _TRUNCATE, refuse_syscalls
assert ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0
assert refuse_syscalls(_TRUNCATE, errno.EACCES)
print(json.dumps({{"truncate": attempt(lambda: os.truncate({str(shard)!r}, 0)),
                  "read": attempt(lambda: open({str(shard)!r}, "rb").read()),
                  "write": attempt(lambda: open({str(tmp_path)!r} + "/new", "w").write("ok"))}}))
''')
    assert got == {"truncate": errno.EACCES, "read": 0, "write": 0}, got
    assert shard.stat().st_size == 4096 and (tmp_path / "new").read_text() == "ok"


REACH = TRY + '''
import psycopg, redis
def services(redis_url, database_url):
    def ping():
        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
            return 0
        except redis.ConnectionError as e:
            return e.args[0] if e.args else str(e)
    def sql():
        try:
            psycopg.connect(database_url, connect_timeout=5).close()
            return 0
        except psycopg.OperationalError as e:
            return str(e)
    return {"redis": ping(), "postgresql": sql()}
'''


def test_a_confined_process_reaches_no_service_and_changes_no_file_outside(tmp_path: Path, servers,
                                                                         landlock_support) -> None:
    """Landlock restricts paths, not sockets: without the seccomp filter `confine` adds, a parser
    (or decoder, or built-in) taken over by a document connected to the service's own Redis — an
    RQ job it enqueues runs in an unconfined worker — and PostgreSQL. None can change a file's
    mode, times or attributes outside (chmod 000 of a shard: Landlock does not cover it), and the
    parser and decoder (`confine_reader`) cannot signal the worker that started them either, nor
    leave their process group (what they fork is killed with that group when they end)."""
    batch = tmp_path / "b1"
    batch.mkdir()
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    shard = tmp_path / "shard"
    shard.write_bytes(b"x" * 4096)
    shard.chmod(0o640)
    before = shard.stat()
    out = tmp_path / "output"
    out.mkdir()
    urls = f"{servers['redis_url']!r}, {servers['database_url']!r}"
    parser = _inside(REACH + f'''
from hoardfs.adapters.isolated import confine_parser
assert confine_parser({str(batch)!r})
shard = {str(shard)!r}
res = services({urls})
res.update({{"chmod": attempt(lambda: os.chmod(shard, 0)), "utime": attempt(lambda: os.utime(shard, (0, 0))),
            "xattr": attempt(lambda: os.setxattr(shard, "user.x", b"1")),
            "signal the parent": attempt(lambda: os.kill(os.getppid(), 0)),
            "leave its process group": attempt(lambda: os.setpgid(0, 0)), "leave its session": attempt(os.setsid)}})
print(json.dumps(res))
''')
    builtin = _inside(REACH + f'''
from pathlib import Path
from hoardfs.jobs.actions.builtin import _io
assert _io.confine(Path({str(out)!r}), Path({str(batch)!r}))
res = services({urls})
res.update({{"chmod": attempt(lambda: os.chmod({str(shard)!r}, 0)),
            "utime": attempt(lambda: os.utime({str(shard)!r}, (0, 0))),
            "output's mode": oct(_io.write_bytes(Path({str(out)!r}), "t/x.jpg", b"j").stat().st_mode & 0o777)}})
print(json.dumps(res))
''')
    for who, got in (("parser", parser), ("builtin", builtin)):
        assert got.pop("redis") != 0 and got.pop("postgresql") != 0, (who, got)
    assert parser == {"chmod": errno.EPERM, "utime": errno.EPERM, "xattr": errno.EPERM,
                      "signal the parent": errno.EPERM, "leave its process group": errno.EPERM,
                      "leave its session": errno.EPERM}, parser
    # a built-in's outputs are 0644 from its umask (the worker may run as another user), not chmod
    assert builtin == {"chmod": errno.EPERM, "utime": errno.EPERM, "output's mode": "0o644"}, builtin
    after = shard.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


def test_below_abi_3_an_open_that_truncates_what_it_reads_is_refused(tmp_path: Path, landlock_support) -> None:
    """Linux truncates on open(O_RDONLY | O_TRUNC) a file the uid may write, and Landlock below
    ABI 3 checks only the read right there: a built-in (which reads anywhere) emptied any shard
    on Debian 12's 6.1 despite the truncate(2) filter. The child here builds the ruleset a 6.1
    kernel gets (its `_probe` answers ABI 2: the kernel then enforces exactly ABI 2's rights)."""
    shard, out = tmp_path / "shard", tmp_path / "output"
    shard.write_bytes(b"x" * 4096)
    out.mkdir()
    got = _inside(TRY + f'''
from hoardfs.base import landlock
landlock._probe = lambda: (2, None, None)
assert landlock.confine(write=[{str(out)!r}])
shard, out = {str(shard)!r}, {str(out)!r}
print(json.dumps({{"truncate": attempt(lambda: os.truncate(shard, 0)),
                  "open to read, truncating": attempt(lambda: os.close(os.open(shard, os.O_RDONLY | os.O_TRUNC))),
                  "read": attempt(lambda: open(shard, "rb").read()),
                  "write below the output root, twice": attempt(lambda: [open(out + "/f", "w").write(t)
                                                                         for t in ("long", "x")])}}))
''')
    assert got == {"truncate": errno.EACCES, "open to read, truncating": errno.EACCES, "read": 0,
                   "write below the output root, twice": 0}, got
    assert shard.stat().st_size == 4096 and (out / "f").read_text() == "x"


CHILD = '''
import os, sys, time
open({pidfile!r}, "w").write(str(os.getpid()))
{body}
'''


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and not yet reaped by whoever adopted it, does not)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line[stat_line.rindex(")") + 2] != "Z"


def test_a_process_the_parser_forked_dies_with_it(tmp_path: Path) -> None:
    """A parser made to fork a process that closes its output and lives on (a document that took
    it over) gets that process killed with it when it answers — it was left running, an hour
    here, for ever with a loop (the CI run found one still sleeping)."""
    batch = tmp_path / "b1"
    batch.mkdir()
    grand = tmp_path / "grand"
    body = (f"if os.fork() == 0:\n    os.close(1); os.close(2); open({str(grand)!r}, 'w').write(str(os.getpid()))\n"
            "    time.sleep(3600)\n"
            f"while not os.path.exists({str(grand)!r}): time.sleep(0.01)\n"
            "time.sleep(0.1); print('[]')")
    cmd = [sys.executable, "-c", CHILD.format(pidfile=str(tmp_path / "pid"), body=body)]
    with pytest.raises(HoardError):
        parse_isolated(batch, FORMATS["ytdlp"]("ytdlp"), cmd=cmd, timeout_s=30.0, limit=1 << 20)
    assert _ends(int(grand.read_text())), "the parser's forked process still runs"


#: in a confined reader, the x86_64 calls' i386 twins made through `int 0x80` (a document that took the
#: decoder over runs its own machine code): their numbers differ, so a filter on the x86_64 numbers passed them
I386 = TRY + '''
import ctypes, mmap, sys
from hoardfs.base import landlock
def i386(nr):
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(b"\\xb8" + nr.to_bytes(4, "little") + b"\\xcd\\x80\\xc3")  # mov eax, nr; int 0x80; ret
    return ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
def forked(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps(fn()).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = os.read(r, 4096)
    return json.loads(got) if got else "died"
ia32 = forked(lambda: i386(20) == os.getpid())  # getpid(2) on i386: is there i386 emulation?
assert landlock.confine_reader()
# setsid(2) on i386 (66), in a process the reader forked (the group's leader cannot leave it anyway)
left = forked(lambda: {"returned": i386(66), "left": os.getsid(0) == os.getpid()})
print(json.dumps({"ia32": ia32, "setsid": left, "getppid": forked(lambda: i386(64))}))
'''


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the i386 system call ABI is x86_64's")
def test_a_confined_reader_cannot_leave_its_group_through_the_i386_abi(landlock_support) -> None:
    """What `confine_reader` refuses (setsid, setpgid, kill, chmod …; sockets in every confined
    process) is refused through every ABI the kernel offers, not only x86_64's: a forked process
    of a decoder taken over that called setsid(2) through `int 0x80` (number 66) left the process
    group `end_group` kills and outlived it — and i386's socketcall(2) reached Redis the same way."""
    got = _inside(I386)
    if got["ia32"] is not True:
        missing("NO I386 EMULATION IN THIS KERNEL: the i386 ABI cannot be tried")
    assert got["setsid"] == {"returned": -errno.ENOSYS, "left": False}, got
    assert got["getppid"] == -errno.ENOSYS, got  # every i386 call, not only those refused by number


def _ends(pid: int) -> bool:
    """Whether `pid` stops running within 5 s: a SIGKILL is delivered at once, and whoever adopted
    the process reaps it when it does."""
    for _ in range(500):
        if not _alive(pid):
            return True
        time.sleep(0.01)
    return False


#: a decoder taken over by an image: it forks a process that closes its pipes and lives on, then ends its answer so
FORKS = '''
import os, struct, sys, time
head = sys.stdin.buffer.read(9)
sys.stdin.buffer.read(struct.unpack(">cQ", head)[1])
if os.fork() == 0:
    os.close(0); os.close(1); os.close(2)
    open({grand!r} + ".tmp", "w").write(str(os.getpid()))
    os.rename({grand!r} + ".tmp", {grand!r})
    time.sleep(3600)
while not os.path.exists({grand!r}): time.sleep(0.01)
{ending}
'''


@pytest.mark.parametrize("ending", [
    pytest.param("sys.stdout.buffer.write(b'J' + (8).to_bytes(8, 'big') + b'<svg/on>'); sys.stdout.flush(); "
                 "sys.stdin.read()", id="lies"),
    pytest.param("sys.stdout.buffer.write(b'J' + (100).to_bytes(8, 'big') + b'\\xff\\xd8\\xff')", id="dies-mid-answer"),
    pytest.param("time.sleep(3600)", id="hangs"),
    pytest.param("sys.stdout.buffer.write(b'N' + (0).to_bytes(8, 'big'))", id="answers-then-ends"),
])
def test_a_process_the_thumbnail_decoder_forked_dies_with_it(tmp_path: Path, ending: str) -> None:
    """A decoder made to fork a process that closes its pipes and lives on gets that process
    killed with it when it is replaced — whether it lied, died mid-answer, hung or ended after
    answering (the GUI killed only the decoder, or reaped one that had ended, and left what it
    forked running)."""
    grand = tmp_path / "grand"
    dec = Decoder([sys.executable, "-c", FORKS.format(grand=str(grand), ending=ending)], timeout_s=5)
    try:
        dec.thumbnail(b"\xff\xd8\xff any image")
        while dec._proc is not None and not ended(dec._proc):  # (the one that answered: till it ends)
            time.sleep(0.01)
        dec.argv = Decoder().argv  # the next image's decoder is the real one
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buf, "PNG")
        assert dec.thumbnail(buf.getvalue())[0] is not None
        assert _ends(int(grand.read_text())), "the decoder's forked process still runs"
    finally:
        dec.close()
        if grand.exists() and _alive(int(grand.read_text())):  # (a failure leaves no process behind)
            os.kill(int(grand.read_text()), 9)


def test_a_decoder_reaped_behind_the_guis_back_is_replaced() -> None:
    """A decoder that died and that something else in the GUI's process reaped (a library's wait
    for any child) is taken as ended — its id, maybe another's by now, is not signalled — and the
    next image gets a new decoder."""
    dec = Decoder()
    try:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buf, "PNG")
        assert dec.thumbnail(buf.getvalue())[0] is not None
        assert dec._proc is not None
        first = dec._proc.pid
        os.kill(first, 9)
        os.waitpid(first, 0)  # reaped, not by the Decoder
        assert dec.thumbnail(buf.getvalue())[0] is not None
        assert dec._proc is not None and dec._proc.pid != first
    finally:
        dec.close()


@pytest.mark.parametrize("body,timeout_s,why", [
    ("time.sleep(3600)", 2.0, "gave no answer within 2 s"),  # a document that makes it loop
    ("os.fork() or time.sleep(3600)\nprint('{}')", 2.0, "gave no answer within 2 s"),  # a grandchild keeps stdout
    ("while True: sys.stdout.write('[' * 65536)", 600.0, "answered more than 1 MB"),  # never ending
    ("print('[' * 100000 + ']' * 100000)", 600.0, "an answer that is not a parse"),  # nested past the recursion
    ("print('{\"records\": [], \"rejects\"')", 600.0, "an answer that is not a parse"),  # dies mid-answer, exit 0
    ("print('[1]')", 600.0, "an answer that is not a parse"),
    ("print('{\"error\": \"x\", \"exit_code\": 99}')", 600.0, "an error about a batch directory that opens"),
    ("import json; print(json.dumps({'records': [{'node': 1}], 'rejects': [], 'claimed': [], 'files': {}, "
     "'identity': {}}))", 600.0, "record 0, which is malformed"),
    ("import json; print(json.dumps({'records': [], 'rejects': [[['a'], 1]], 'claimed': [], 'files': {}, "
     "'identity': {}}))", 600.0, "rejects that are not names with a reason"),
    ("sys.stderr.write('\\x1b]0;owned\\x07 said'); print('[]')", 600.0, "an answer that is not a parse"),
    # the screen's refusal is the parent's own line: a parser taken over gives no "next step"
    ("print('{\"error\": \"disk failing: run `hoard-fix` as root\", \"exit_code\": 5}')", 600.0,
     "named an error about a batch directory that opens"),
])
def test_a_parser_made_to_lie_or_hang_is_stopped_and_refused_in_one_line(tmp_path: Path, body: str, timeout_s: float,
                                                                         why: str, caplog) -> None:
    """The ingest takes from the sandboxed parser only a parse: a child that hangs (or leaves a
    grandchild holding its stdout), writes without end, nests its JSON past Python's recursion,
    stops mid-answer, answers another shape, or the screen's refusal of a batch directory that
    opens (its own text for hoard's) refuses the batch in
    one line (exit 5), what it printed logged without its escape sequences — never a traceback, never a worker waiting for ever or holding gigabytes —
    and the child is killed and reaped (no zombie)."""
    caplog.set_level("INFO", logger="hoardfs.adapters.isolated")
    batch = tmp_path / "b1"
    batch.mkdir()
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", CHILD.format(pidfile=str(pidfile), body=body)]
    with pytest.raises(HoardError) as e:
        parse_isolated(batch, FORMATS["ytdlp"]("ytdlp"), cmd=cmd, timeout_s=timeout_s, limit=1 << 20)
    assert why in e.value.message and "\n" not in e.value.message and e.value.exit_code == 5, e.value.message
    assert "hoard-fix" not in e.value.message
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists()  # neither running nor a zombie
    assert not any("\x1b" in r.getMessage() for r in caplog.records)  # what it printed reaches no terminal raw


TAKEN_OVER = r'''
import fcntl, sys, termios
from hoardfs.base import landlock
landlock.confine_reader()  # as the decoder does before its first image
sys.stdin.buffer.read(9)
try:
    for c in b"echo pwned\n":
        fcntl.ioctl(2, termios.TIOCSTI, bytes([c]))
    said = b"pushed"
except OSError as e:
    said = str(e).encode()
sys.stdout.buffer.write(b"N" + len(said).to_bytes(8, "big") + said)
sys.stdout.flush()
sys.stdin.read()
'''

IN_A_TERMINAL = '''
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:  # the GUI, started from a shell: its stderr is the terminal
    import tty
    from hoardfs.fsd.outputs.thumb_decoder import Decoder
    tty.setraw(0)
    dec = Decoder([sys.executable, "-c", {liar!r}])
    print(dec.thumbnail(b"any image")[1], flush=True)
    dec.close()
    print("the shell reads:", os.read(0, 100) if select.select([0], [], [], 1)[0] else None, flush=True)
    os._exit(0)
out = b""
while True:
    try:
        chunk = os.read(fd, 1000)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
print(out.decode(errors="replace"))
'''


def test_a_decoder_taken_over_pushes_no_keystrokes_into_the_terminal_of_the_gui(landlock_support) -> None:
    """The decoder inherits the GUI's stderr — the terminal of the shell that started `hoard gui`
    or `make demo` — and Landlock does not restrict a descriptor opened before it: one taken over
    by an image pushed `echo pwned` into that shell with TIOCSTI (as root, whatever its session).
    `confine` refuses TIOCSTI and TIOCLINUX (`refuse_ioctls`); the decoder runs in a session of
    its own too."""
    res = subprocess.run([sys.executable, "-c", IN_A_TERMINAL.format(liar=TAKEN_OVER)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert "the shell reads: None" in res.stdout and "pushed" not in res.stdout, res.stdout + res.stderr


def test_a_confined_child_gets_none_of_the_services_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """HOARD_DATABASE_URL may carry the database's password: a parser or decoder taken over had it
    in its environment and could put it in a title every GUI user reads. They get PATH, the
    locale and TZ, none of the service's variables."""
    monkeypatch.setenv("HOARD_DATABASE_URL", "postgresql://hoard:s3cret@db/hoard")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    dump = "import json, os; json.dump(dict(os.environ), open({path!r}, 'w'))"
    env_parser, env_decoder = tmp_path / "parser.json", tmp_path / "decoder.json"
    batch = tmp_path / "b1"
    batch.mkdir()
    with pytest.raises(HoardError):  # it answers nothing: only its environment is looked at
        parse_isolated(batch, FORMATS["ytdlp"]("ytdlp"),
                       cmd=[sys.executable, "-c", dump.format(path=str(env_parser)) + "; print('[]')"])
    dec = Decoder([sys.executable, "-c", dump.format(path=str(env_decoder))])
    try:
        dec.thumbnail(b"any image")
    finally:
        dec.close()
    for f in (env_parser, env_decoder):
        env = json.loads(f.read_text())
        assert "HOARD_DATABASE_URL" not in env and env.get("LC_ALL") == "C.UTF-8" and "PATH" in env, (f.name, sorted(env))


def test_a_decoder_that_stops_reading_holds_no_thumbnail_for_ever(tmp_path: Path) -> None:
    """The deadline runs from the first byte sent: a decoder taken over by one image that stops
    reading its stdin blocked the GUI's write of the next (a megabyte does not fit a pipe) for
    ever, holding the lock every thumbnail waits on. It is killed and reaped; the next image gets
    a decoder that answers."""
    pidfile = tmp_path / "pid"
    stuck = Decoder([sys.executable, "-c", CHILD.format(pidfile=str(pidfile), body="time.sleep(3600)")], timeout_s=2)
    try:
        jpeg, why = stuck.thumbnail(b"\xff\xd8\xff" + b"x" * (1 << 20))
        assert jpeg is None and "TimeoutError" in why and stuck._proc is None, why
        assert not Path(f"/proc/{pidfile.read_text()}").exists()  # neither running nor a zombie
        stuck.argv = Decoder().argv  # the next one started is the real decoder
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buf, "PNG")
        assert stuck.thumbnail(buf.getvalue())[0] is not None
    finally:
        stuck.close()


def test_confine_refuses_a_process_whose_other_threads_would_stay_outside(tmp_path: Path, landlock_support) -> None:
    """Landlock and seccomp confine the calling thread and what it starts afterwards: `canny`
    imported numpy and OpenCV, whose pools (two threads) started before `_io.confine` and stayed
    unconfined in the same memory — one image that takes the decoder over writes through them.
    `confine` refuses a process with another thread; hoard-builtin keeps those pools to its one
    thread (the real `canny` below runs confined, its output written)."""
    got = _inside(f'''
import json, threading, time
from hoardfs.base import landlock
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
try:
    landlock.confine(write=[{str(tmp_path)!r}])
    print(json.dumps("confined"))
except RuntimeError as e:
    print(json.dumps(str(e)))
''')
    assert "1 other thread(s) of this process run already" in got, got
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    Image.new("RGB", (64, 48), "red").save(inp / "a.png")
    res = subprocess.run([str(Path(sys.executable).parent / "hoard-builtin"), "canny", str(inp), str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0 and list(out.rglob("*.png")), res.stderr


def test_a_confined_process_sets_no_attribute_flag_on_a_file_it_may_read(tmp_path: Path, landlock_support) -> None:
    """FS_IOC_SETFLAGS works on a descriptor opened only to read, which Landlock allows: a
    built-in (it reads anywhere) run by root made a shard immutable (chattr +i: the store could
    no longer write or remove it), and any user may set sync or noatime on its own files.
    `confine` refuses the request; reading the flags goes on."""
    shard = tmp_path / "shard"
    shard.write_bytes(b"x" * 4096)
    out = tmp_path / "output"
    out.mkdir()
    res = subprocess.run(["lsattr", str(shard)], capture_output=True, text=True)
    if res.returncode != 0:
        missing(f"NO ATTRIBUTE FLAGS on {tmp_path}'s filesystem: {res.stderr.strip()}")
    got = _inside(TRY + f'''
import fcntl, struct
from hoardfs.base import landlock
assert landlock.confine(write=[{str(out)!r}])
fd = os.open({str(shard)!r}, os.O_RDONLY)
flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, bytes(8)))[0]  # FS_IOC_GETFLAGS
print(json.dumps({{"noatime": attempt(lambda: fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags | 0x80))),
                  "immutable": attempt(lambda: fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags | 0x10)))}}))
''')
    res = subprocess.run(["lsattr", str(shard)], capture_output=True, text=True)
    subprocess.run(["chattr", "-i", "-A", str(shard)], capture_output=True)  # pytest removes tmp_path
    assert got == {"noatime": errno.EPERM, "immutable": errno.EPERM}, got
    assert "i" not in res.stdout.split()[0] and "A" not in res.stdout.split()[0], res.stdout


def test_a_confined_process_holds_none_of_the_services_locks(tmp_path: Path, landlock_support) -> None:
    """flock(2) needs only a descriptor open to read: a built-in (it reads anywhere) took the
    exclusive flock of `<ssd>/locks/store.lock` or a zone's reservations and held every store
    write and ingest for as long as it ran. `confine` refuses flock (ENOLCK); the service, a
    process apart, takes the lock at once."""
    lock = tmp_path / "store.lock"
    lock.touch()
    out = tmp_path / "output"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", TRY + f'''
import fcntl, sys, json
from hoardfs.base import landlock
assert landlock.confine(write=[{str(out)!r}])
fd = os.open({str(lock)!r}, os.O_RDONLY)
print(json.dumps(attempt(lambda: fcntl.flock(fd, fcntl.LOCK_EX))), flush=True)
sys.stdin.read()  # holds what it took until told to end
'''], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and json.loads(proc.stdout.readline()) == errno.ENOLCK
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the confined one held it
        finally:
            os.close(fd)
    finally:
        proc.communicate("", timeout=60)


def test_the_decoder_outlives_the_thread_that_started_it_and_ends_with_the_gui(tmp_path: Path) -> None:
    """The GUI asks for thumbnails from pool threads: a decoder that died with the thread that
    started it (PR_SET_PDEATHSIG follows the thread) failed the next image, whose "no thumbnail"
    was then kept for good. It is now one process across threads, and it ends when the GUI does
    — killed (-9), the GUI's end of its stdin closes."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    dec = Decoder()
    try:
        got = []
        for _ in range(2):
            t = threading.Thread(target=lambda: got.append(dec.thumbnail(buf.getvalue())))
            t.start()
            t.join()
        assert [j is not None for j, _ in got] == [True, True], [why for _, why in got]
    finally:
        dec.close()
    gui = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys
        from hoardfs.fsd.outputs.thumb_decoder import Decoder
        dec = Decoder()
        assert dec.thumbnail({buf.getvalue()!r})[0] is not None
        print(dec._proc.pid, flush=True)
        sys.stdin.read()
    ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert gui.stdout is not None
    decoder = int(gui.stdout.readline())
    gui.kill()
    gui.wait()
    pidfd = os.pidfd_open(decoder)
    try:
        assert select.select([pidfd], [], [], 120)[0], "the decoder outlived the GUI"  # readable once it ended
    finally:
        os.close(pidfd)


def test_a_process_with_descriptors_above_1023_still_parses_and_decodes(tmp_path: Path) -> None:
    """select() refuses a descriptor above 1023 (ValueError): a worker or GUI holding that many
    (a container's high limit, many clients) failed every batch and every thumbnail with a
    traceback. The pipes to the children are watched with poll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        missing(f"RLIMIT_NOFILE's hard limit is {hard}: no descriptor above 1023 to try")
    batch = tmp_path / "b1"
    batch.mkdir()
    (batch / "v.info.json").write_text(json.dumps({"id": "v", "title": "t"}))
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    dec = Decoder()
    try:
        _, view, records = parse_isolated(batch, FORMATS["ytdlp"]("ytdlp"))
        assert sorted(view.files) == ["v.info.json", "v.mp4"] and [r["title"] for r in records] == ["t"]
        assert dec.thumbnail(buf.getvalue())[0] is not None
    finally:
        dec.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _bomb(batch: Path, dicts: int) -> None:
    """A ytdlp batch whose sidecar is `dicts` empty JSON objects (3 bytes each in the file,
    some 64 in a parser's memory) beside its video."""
    batch.mkdir(parents=True)
    with open(batch / "v.info.json", "w") as fh:
        fh.write('{"id": "v", "title": "t", "x": [' + ",".join(["{}"] * dicts) + "]}")
    (batch / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42")


@pytest.mark.expect_log(r"exception raised while executing", level="ERROR")  # rq's record of the failed step
def test_a_document_that_expands_past_the_parsers_memory_fails_its_batch_alone(hoard_home: Path, pg,
                                                                              redis_conn) -> None:
    """A sidecar of 24 MB that is 8 million empty objects takes some 600 MB to parse: the parser
    child had no memory bound, and a few such documents took the server's memory. It now has
    `ingest.parser_memory_mb` (RLIMIT_AS): over it, the batch fails in one line naming it, the
    key and the next step — its files stay where they were, nothing of it stored — and the next
    batch is ingested as usual."""
    from hoardfs.jobs import ingest as ua1
    from tests.test_ingest import ingest_all

    cfg = ingest_home(hoard_home, pg, parser_memory_mb=128)
    zone3a = cfg.ssd.zone_path("3A")
    _bomb(zone3a / "bomb-1", 8_000_000)
    good = zone3a / "good-1"
    good.mkdir()
    (good / "v.info.json").write_text(json.dumps({"id": "v", "title": "fine"}))
    (good / "v.mp4").write_bytes(b"\0\0\0\x18ftypmp42 good")
    before = {p.name: p.stat().st_size for p in (zone3a / "bomb-1").iterdir()}
    bomb, ok = ingest_all(cfg, redis_conn, [zone3a / "bomb-1", good], "ytdlp")
    assert bomb.status == "failed" and bomb.error is not None, (bomb.status, bomb.error)
    assert "\n" not in bomb.error and "batch bomb-1 needed more than 128 MB (ingest.parser_memory_mb)" in bomb.error
    assert "`hoard ingest --resume bomb-1`" in bomb.error, bomb.error
    assert {p.name: p.stat().st_size for p in (zone3a / "bomb-1").iterdir()} == before  # kept, whole
    assert not (zone3a / "_quarantine" / "bomb-1").exists()
    assert ok.status == "done", (ok.status, ok.error)
    assert ua1.load_state(cfg, "good-1").report["records"] == 1


SAYS = r'''
import struct, sys
head = sys.stdin.buffer.read(9)
sys.stdin.buffer.read(struct.unpack(">cQ", head)[1])
sys.stderr.buffer.write(b"\x1b]0;owned\x07[bold red]fake[/] line\nsecond\n" + b"x" * (1 << 20))
sys.stderr.buffer.flush()
sys.stdout.buffer.write(b"N" + (0).to_bytes(8, "big"))
sys.stdout.buffer.flush()
sys.stdin.buffer.read()
'''


def test_what_the_decoder_prints_is_one_bounded_safe_line_in_the_log(capfd, caplog) -> None:
    """The decoder's stderr was the GUI's own: what an image made it print (an escape sequence
    retitling the terminal, markup, a fake log line, a megabyte) reached the GUI's terminal and
    journal unfiltered. It is a pipe of the GUI's, read while it waits (a full pipe does not stop
    the decoder), and logged as one line shown safe, its first 2,000 bytes and a count of the
    rest; the image's answer is still taken."""
    caplog.set_level("INFO", logger="hoardfs.fsd.outputs.thumb_decoder")
    dec = Decoder([sys.executable, "-c", SAYS])
    try:
        assert dec.thumbnail(b"any image") == (None, "")
    finally:
        dec.close()
    err = capfd.readouterr().err
    assert "owned" not in err and "\x1b" not in err, err[:200]
    lines = [r.getMessage() for r in caplog.records if r.name == "hoardfs.fsd.outputs.thumb_decoder"]
    assert len(lines) == 1 and "\n" not in lines[0] and "\x1b" not in lines[0] and len(lines[0]) < 9000, lines
    assert "said: \\x1b]0;owned\\x07[bold red]fake[/] line\\x0asecond\\x0axx" in lines[0], lines[0][:200]
    said = len(b"\x1b]0;owned\x07[bold red]fake[/] line\nsecond\n") + (1 << 20)
    assert lines[0].endswith(f" (and {said - 2000} bytes more)"), lines[0][-80:]
