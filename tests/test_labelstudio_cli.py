"""`hoard labelstudio up|down|status|token` in a fresh embedded setup: Label Studio started from
`make labelstudio`'s venv, its data under the setup's state, serving zone 3C's staged files, a
user and its token made once (0600) where AC5 reads it, the process it started stopped by
`down` and nothing else."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hoardfs.base import config
from hoardfs.jobs.actions import labelstudio as lsc
from tests.helpers import REPO, missing
from tests.labelstudio import VENV
from tests.nolandlock import UNSUPPORTED


def _hoard(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), *args], cwd=home,
                          capture_output=True, text=True, timeout=600)


def _setup(home: Path, venv: Path) -> None:
    """`hoard init --embedded` in `home`, Label Studio's venv named through converter_python."""
    home.mkdir(exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "hoardfs", "init", "--embedded"], cwd=home, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(home / "hoard.toml", "a") as fh:
        fh.write(f"\n[label_studio]\nconverter_python = {json.dumps(str(venv / 'bin' / 'python'))}\n")


@pytest.mark.services  # runs `hoard` processes
def test_up_without_label_studio_names_make_labelstudio(tmp_path: Path) -> None:
    """No venv with label-studio: one line naming `make labelstudio`, exit 2, nothing started."""
    _setup(tmp_path, tmp_path / "no-venv")
    res = _hoard(tmp_path, "labelstudio", "up")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "make labelstudio" in lines[0] and "Traceback" not in res.stderr
    down = _hoard(tmp_path, "labelstudio", "status", "--json")
    assert down.returncode == 3 and json.loads(down.stdout)["running"] is False


@pytest.mark.services  # starts a Label Studio of its own (its first start applies its migrations: ~45 s)
def test_up_status_token_down_on_the_embedded_default(tmp_path: Path) -> None:
    """`up` starts Label Studio and returns once it answers; again it says it runs already;
    `status --json` gives running, url, pid; `token` prints the 0600 token that its API takes
    and AC5 finds without a [label_studio] url or token_file; a file staged in zone 3C is served
    to a task; `down` stops that process, `status` then says stopped (exit 3)."""
    if not (VENV / "bin" / "label-studio").is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    home = tmp_path / "setup"
    _setup(home, VENV)
    try:
        up = _hoard(home, "labelstudio", "up")
        assert up.returncode == 0 and "started at http://127.0.0.1:" in up.stdout, up.stdout + up.stderr
        again = _hoard(home, "labelstudio", "up")
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        st = _hoard(home, "labelstudio", "status", "--json")
        doc = json.loads(st.stdout)
        assert st.returncode == 0 and set(doc) == {"running", "url", "pid"} and doc["running"] is True
        assert doc["url"] in up.stdout and f"pid {doc['pid']}" in up.stdout
        tok = _hoard(home, "labelstudio", "token")
        token = tok.stdout.strip()
        cfg = config.load(home / "hoard.toml")
        token_file = cfg.ssd.root / "state" / "labelstudio" / "token"
        assert tok.returncode == 0 and token == token_file.read_text().strip() and len(token) >= 20
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        r = httpx.get(f"{doc['url']}/api/projects/", headers={"Authorization": f"Token {token}"}, timeout=60)
        assert r.status_code == 200, r.text
        # AC5 uses it as hoard.toml names no url or token_file, and it serves zone 3C's staged files
        ls = lsc.client_from_settings(cfg)
        assert (ls.url, ls.token, ls.document_root) == (doc["url"], token, cfg.ssd.zone_path("3C"))
        staged = cfg.ssd.zone_path("3C") / "run-1" / "input" / "a.png"
        staged.parent.mkdir(parents=True)
        staged.write_bytes(b"\x89PNG not really")
        config_xml = '<View><Image name="image" value="$image"/></View>'
        project = lsc.ensure_project(ls, "hoard cli test", config_xml)
        lsc.import_tasks(ls, project, [lsc.Task("c" * 64, "run-1/input/a.png")], config_xml)
        [task] = lsc.project_tasks(ls, project)
        got = httpx.get(doc["url"] + task["data"]["image"], headers={"Authorization": f"Token {token}"}, timeout=60)
        assert got.status_code == 200 and got.content == staged.read_bytes()
        down = _hoard(home, "labelstudio", "down")
        assert down.returncode == 0 and f"stopped (pid {doc['pid']})" in down.stdout, down.stdout + down.stderr
        assert not os.path.exists(f"/proc/{doc['pid']}") or \
            Path(f"/proc/{doc['pid']}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
        after = _hoard(home, "labelstudio", "status", "--json")
        assert after.returncode == 3 and json.loads(after.stdout) == {"running": False, "url": doc["url"], "pid": None}
        assert "not running" in _hoard(home, "labelstudio", "down").stdout
    finally:
        _hoard(home, "labelstudio", "down")


@pytest.mark.services  # starts a Label Studio of its own (its first start applies its migrations: ~45 s)
def test_up_serves_no_link_out_of_the_document_root(tmp_path: Path) -> None:
    """Label Studio that `up` starts serves through /data/local-files/ only files below its
    document root: a link a worker plants in zone 3C to a file outside it (a secret in /tmp, a
    disk's file, the LMDB index, hoard.toml, Label Studio's own database and `.env` — every
    account's token, the key that signs its cookies —, its venv, /etc/passwd, /dev/null, a
    /proc/self path) is answered 404 under a local-files storage that covers it, nor imported as
    a task by one that reads JSON files, nor overwritten by an export storage's annotation file,
    confined and with label_studio.confine = false, while a staged file and a link to one inside
    3C are served."""
    if not (VENV / "bin" / "label-studio").is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    home = tmp_path / "setup"
    _setup(home, VENV)
    cfg = config.load(home / "hoard.toml")
    out = cfg.ssd.zone_path("3C") / "run-1" / "out"
    out.mkdir(parents=True)
    (out / "a.png").write_bytes(b"\x89PNG staged")
    (out / "inside.png").symlink_to(out / "a.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET of another user\n")
    own = cfg.ssd.root / "state" / "labelstudio" / "data"
    outside = {"tmp.jpg": secret, "disk.jpg": cfg.disks[0].path / ".hoard-disk.json",
               "index.jpg": cfg.ssd.root / "index" / "data.mdb", "toml.jpg": home / "hoard.toml",
               "db.jpg": own / "label_studio.sqlite3", "env.jpg": own / ".env", "data": own,
               "venv.jpg": VENV / "pyvenv.cfg", "passwd.jpg": Path("/etc/passwd"), "null.jpg": Path("/dev/null"),
               "cwd.jpg": Path("/proc/self/cwd/data/.env"), "environ.jpg": Path("/proc/self/environ")}
    for name, target in outside.items():
        (out / name).symlink_to(target)
    tasks = cfg.ssd.zone_path("3C") / "run-2" / "out"  # a storage that imports tasks from JSON files
    tasks.mkdir(parents=True)
    (tasks / "export.json").symlink_to(own / "export" / "secret.json")
    try:
        for confine in (True, False):
            if not confine:
                _hoard(home, "labelstudio", "down")
                with open(home / "hoard.toml", "a") as fh:
                    fh.write("confine = false\n")  # [label_studio] is the file's last table
            up = _hoard(home, "labelstudio", "up")
            assert up.returncode == 0, up.stdout + up.stderr
            url = json.loads(_hoard(home, "labelstudio", "status", "--json").stdout)["url"]
            auth = {"Authorization": f"Token {_hoard(home, 'labelstudio', 'token').stdout.strip()}"}
            if confine:
                project = httpx.post(f"{url}/api/projects/", headers=auth, json={"title": "links"}, timeout=60)
                assert project.status_code == 201, project.text
                storage = httpx.post(f"{url}/api/storages/localfiles/", headers=auth, timeout=60,
                                     json={"project": project.json()["id"], "path": str(out.parent),
                                           "use_blob_urls": True, "title": "run-1"})
                assert storage.status_code == 201, storage.text
                (own / "export" / "secret.json").write_text('{"data": {"text": "TOP SECRET export"}}')
                json_storage = httpx.post(f"{url}/api/storages/localfiles/", headers=auth, timeout=60,
                                          json={"project": project.json()["id"], "path": str(tasks),
                                                "use_blob_urls": False, "title": "run-2"}).json()["id"]
            sync = httpx.post(f"{url}/api/storages/localfiles/{json_storage}/sync", headers=auth, timeout=120)
            listed = httpx.get(f"{url}/api/tasks/", params={"project": project.json()["id"]}, headers=auth,
                               timeout=60)
            assert sync.status_code == 200 and listed.status_code == 200 and "TOP SECRET" not in listed.text, \
                (confine, listed.text[:300])
            # an export storage in 3C writes each annotation to a file named by its id or its task's
            victim = own / "victim.txt"
            victim.write_text("Label Studio's own file\n")
            exports = cfg.ssd.zone_path("3C") / f"run-3-{confine}" / "out"
            exports.mkdir(parents=True)
            labelled = httpx.post(f"{url}/api/projects/", headers=auth, timeout=60, json={
                "title": f"export {confine}", "label_config": '<View><Text name="t" value="$text"/><Choices '
                'name="c" toName="t"><Choice value="a"/></Choices></View>'}).json()["id"]
            httpx.post(f"{url}/api/projects/{labelled}/import", headers=auth, json=[{"text": "x"}], timeout=60)
            task = httpx.get(f"{url}/api/tasks/", params={"project": labelled}, headers=auth,
                             timeout=60).json()["tasks"][0]["id"]
            ann = httpx.post(f"{url}/api/tasks/{task}/annotations/", headers=auth, timeout=60, json={"result": [
                {"from_name": "c", "to_name": "t", "type": "choices", "value": {"choices": ["a"]}}]}).json()["id"]
            for key in {str(ann), str(task), f"{task}.json"}:
                (exports / key).symlink_to(victim)
            target = httpx.post(f"{url}/api/storages/export/localfiles", headers=auth, timeout=60,
                                json={"project": labelled, "path": str(exports), "title": "export"})
            assert target.status_code == 201, target.text
            httpx.post(f"{url}/api/storages/export/localfiles/{target.json()['id']}/sync", headers=auth, timeout=120)
            assert victim.read_text() == "Label Studio's own file\n", confine

            def served(name: str, url: str = url, auth: dict[str, str] = auth) -> httpx.Response:
                return httpx.get(f"{url}/data/local-files/", params={"d": f"run-1/out/{name}"}, headers=auth,
                                 timeout=60)

            assert [(served(n).status_code, served(n).content) for n in ("a.png", "inside.png")] == \
                [(200, b"\x89PNG staged")] * 2, confine
            assert (own / ".env").read_text().strip() and (own / "label_studio.sqlite3").stat().st_size
            for name, target in [*outside.items(), ("data/.env", own / ".env"), ("../../../state/x", own)]:
                got = served(name)
                leaked = target.is_file() and str(target).startswith(str(tmp_path)) and \
                    target.read_bytes()[:16] in got.content
                assert got.status_code == 404 and not leaked, (confine, name, got.status_code)
    finally:
        _hoard(home, "labelstudio", "down")


@pytest.mark.services  # runs `hoard` processes
def test_up_refuses_a_document_root_that_holds_the_ssds_state(tmp_path: Path) -> None:
    """label_studio.document_root a directory above the SSD root (its state/ holds Label
    Studio's token and password, the GUI's users and keys): `up` refuses in one line naming the
    key, exit 2, confined or not, and starts nothing."""
    if not (VENV / "bin" / "label-studio").is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    home = tmp_path / "setup"
    _setup(home, VENV)
    cfg = config.load(home / "hoard.toml")
    with open(home / "hoard.toml", "a") as fh:  # [label_studio] is the file's last table
        fh.write(f"document_root = {json.dumps(str(cfg.ssd.root.parent))}\n")
    try:
        for confine in (True, False):
            if not confine:
                with open(home / "hoard.toml", "a") as fh:
                    fh.write("confine = false\n")
            res = _hoard(home, "labelstudio", "up")
            lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
            assert res.returncode == 2 and len(lines) == 1, (confine, res.returncode, lines)
            assert "label_studio.document_root" in lines[0] and "state" in lines[0], lines
            st = _hoard(home, "labelstudio", "status", "--json")
            assert st.returncode == 3 and json.loads(st.stdout)["running"] is False
    finally:
        _hoard(home, "labelstudio", "down")


@pytest.mark.services  # runs `hoard` processes
def test_up_refuses_a_document_root_that_holds_hoard_toml(tmp_path: Path) -> None:
    """hoard.toml (named by --config) in a directory below label_studio.document_root, the SSD
    elsewhere: `up` refuses in one line naming the key and hoard.toml, exit 2, starts nothing."""
    if not (VENV / "bin" / "label-studio").is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    home = tmp_path / "setup"
    _setup(home, VENV)
    conf = tmp_path / "docs" / "conf" / "hoard.toml"
    conf.parent.mkdir(parents=True)
    text = (home / "hoard.toml").read_text().replace('"var', f'"{home}/var')  # its paths made absolute
    conf.write_text(text + f"document_root = {json.dumps(str(tmp_path / 'docs'))}\n")  # [label_studio] is last

    def hoard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(conf), *args], cwd=home,
                              capture_output=True, text=True, timeout=600)

    try:
        res = hoard("labelstudio", "up")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1, (res.returncode, lines)
        assert "label_studio.document_root" in lines[0] and "hoard.toml" in lines[0], lines
        st = hoard("labelstudio", "status", "--json")
        assert st.returncode == 3 and json.loads(st.stdout)["running"] is False
    finally:
        hoard("labelstudio", "down")


@pytest.mark.services  # runs `hoard` processes behind tests/nolandlock.py
def test_up_where_the_kernel_cannot_confine_is_refused_in_one_line(tmp_path: Path) -> None:
    """`hoard labelstudio up` (label_studio.confine, default true) on a kernel without Landlock:
    one line naming label_studio.confine and why, exit 3, nothing started; with Landlock but no
    seccomp filter, the launcher refuses to start it and `up` says so in one line, naming the key."""
    if not (VENV / "bin" / "label-studio").is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    home = tmp_path / "setup"
    _setup(home, VENV)
    for kernel, code, said in (("ENOSYS", 3, "label_studio.confine: this kernel cannot confine Label Studio: "
                                             "this kernel was built without Landlock"),
                               ("NOSECCOMP", 3, "Label Studio not started: this host cannot confine its network")):
        res = subprocess.run([sys.executable, str(REPO / "tests" / "nolandlock.py"), kernel, "--", sys.executable,
                              "-m", "hoardfs", "--config", str(home / "hoard.toml"), "labelstudio", "up"],
                             cwd=home, capture_output=True, text=True, timeout=300)
        if res.returncode == UNSUPPORTED:
            missing(f"SECCOMP UNAVAILABLE: {res.stderr.strip()}")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == code and len(lines) == 1, (kernel, lines)
        assert said in lines[0] and "set label_studio.confine = false in hoard.toml" in lines[0], lines
        st = _hoard(home, "labelstudio", "status", "--json")
        assert st.returncode == 3 and json.loads(st.stdout)["running"] is False
