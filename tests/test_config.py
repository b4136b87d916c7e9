"""hoard.toml: validation, one-line errors naming file and key, env overrides, docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg.conninfo
import pytest

from hoardfs.base import config
from hoardfs.base.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parent.parent

GOOD = """
database_url = "postgresql:///hoard"
redis_url = "redis://127.0.0.1:6379/0"
[[disks]]
label = "a"
path = "d/a"
[[disks]]
label = "b"
path = "d/b"
[[disks]]
label = "c"
path = "/abs/c"
[ssd]
root = "ssd"
[ssd.zones.3A]
quota_gb = 1
[ssd.zones.3B]
quota_gb = 1
[ssd.zones.3C]
quota_gb = 1
[ssd.zones.3D]
quota_gb = 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hoard.toml"
    p.write_text(text)
    return p


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    """Seed defaults apply; relative paths resolve against the file's directory."""
    cfg = config.load(_write(tmp_path, GOOD))
    st = cfg.store
    assert (st.shard_size_mb, st.batch_size_gb, st.write_ack, st.a4_scale) == (256, 50, 2, 10)
    assert (st.copy_of_raw, st.copy_of_generated) == (2, 2)
    th = cfg.ssd.thresholds
    assert (th.warn, th.deny, th.emergency) == (0.80, 0.90, 0.95)
    assert cfg.disks[0].path == tmp_path / "d" / "a"
    assert cfg.disks[2].path == Path("/abs/c")
    assert cfg.index_dir == tmp_path / "ssd" / "index"
    assert cfg.test_database_url == "postgresql:///hoard_test"  # (read without libpq: a URI)
    assert psycopg.conninfo.conninfo_to_dict(cfg.test_database_url)["dbname"] == "hoard_test"
    assert cfg.test_redis_url == "redis://127.0.0.1:6379/1"


def _with_key(section: str, key: str, value: str) -> str:
    """GOOD with `[section] key = value` added (a key of a disk set on the first disk)."""
    if section == "disks":
        return GOOD.replace('path = "d/a"', f'path = "d/a"\n{key} = "{value}"' if key != "path" else f'path = "{value}"', 1)
    if (section, key) == ("ssd", "root"):
        return GOOD.replace('root = "ssd"', f'root = "{value}"', 1)
    if f"[{section}]" in GOOD:
        return GOOD.replace(f"[{section}]\n", f"[{section}]\n{key} = \"{value}\"\n", 1)
    return GOOD + f"[{section}]\n{key} = \"{value}\"\n"


def _setting(cfg: config.Settings, section: str, key: str):
    sect = getattr(cfg, section)
    return getattr(sect[0] if isinstance(sect, list) else sect, key)


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, k, _ in config.path_keys()])
def test_every_path_key_is_resolved_against_the_file(tmp_path: Path, section: str, key: str) -> None:
    """Every local path key of the model (walked, not listed) given relative is the file's directory's."""
    cfg = config.load(_write(tmp_path, _with_key(section, key, "rel/thing")))
    assert _setting(cfg, section, key) == tmp_path / "rel" / "thing"


def test_the_path_keys_are_every_path_field_of_the_model() -> None:
    """path_keys() finds each Path field of every section; the remote ones are refused instead."""
    found = {(s, k) for s, k, _ in config.path_keys()}
    assert {("mount", "path"), ("gui", "socket"), ("search", "clip_weights"), ("disks", "path"),
            ("ssd", "root"), ("api", "tokens_file")} <= found
    assert not found & config._REMOTE_PATHS


@pytest.mark.parametrize("key", ["files_root", "document_root"])
def test_a_relative_label_studio_host_path_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    """A path on Label Studio's host given relative is one line naming the key, never resolved here."""
    with pytest.raises(ConfigError, match=rf"label_studio\.{key}.*absolute"):
        config.load(_write(tmp_path, _with_key("label_studio", key, "rel/files")))


def test_example_and_embedded_default_are_valid(tmp_path: Path) -> None:
    """The committed example and the embedded template both validate."""
    ex = config.load(REPO / "hoard.example.toml")
    assert [d.label for d in ex.disks] == ["wd4t", "st3t", "hgst2t"]
    emb = config.load(_write(tmp_path, config.embedded_config_text()))
    assert emb.embedded is not None and emb.store.allow_directory_disks
    assert [d.capacity_gb for d in emb.disks] == [4, 3, 2, 1.5]
    assert emb.redis_url == f"unix://{tmp_path}/var/run/redis.sock?db=0"
    assert emb.test_redis_url == f"unix://{tmp_path}/var/run/redis.sock?db=1"
    assert emb.database_url and "host=" + str(tmp_path / "var" / "pg" / "socket") in emb.database_url


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch) -> None:
    """HOARD_DATABASE_URL / HOARD_REDIS_URL / HOARD_STORE__WRITE_ACK beat the file."""
    monkeypatch.setenv("HOARD_DATABASE_URL", "postgresql://elsewhere/hoard")
    monkeypatch.setenv("HOARD_REDIS_URL", "redis://elsewhere:6379/3")
    monkeypatch.setenv("HOARD_STORE__WRITE_ACK", "1")
    cfg = config.load(_write(tmp_path, GOOD))
    assert cfg.database_url == "postgresql://elsewhere/hoard"
    assert cfg.redis_url == "redis://elsewhere:6379/3"
    assert cfg.test_redis_url == "redis://elsewhere:6379/4"
    assert cfg.store.write_ack == 1



def test_environment_gives_nested_keys_tables_and_lists(tmp_path: Path, monkeypatch) -> None:
    """HOARD_<SECTION>__<KEY> at any depth and in any case, a table or a list as JSON, a key given
    beside its whole table winning over the table's; variables that name no key are left alone."""
    for name, value in {"hoard_ssd__zones__3a__quota_gb": "7", "HOARD_SOURCES__MYSRC": "reddit",
                        "HOARD_STORE": '{"write_ack": 2, "copy_of_raw": 3}', "HOARD_STORE__WRITE_ACK": "1",
                        "HOARD_GUI__USERS": "[]", "HOARD_CONFIG": "elsewhere.toml", "HOARD_LOG_JSON": "x"}.items():
        monkeypatch.setenv(name, value)
    cfg = config.load(_write(tmp_path, GOOD))
    assert cfg.ssd.zones["3A"].quota_gb == 7 and cfg.ssd.zones["3B"].quota_gb == 1
    assert cfg.sources == {"mysrc": "reddit"}
    assert (cfg.store.write_ack, cfg.store.copy_of_raw, cfg.store.shard_size_mb) == (1, 3, 256)
    monkeypatch.setenv("HOARD_DISKS", '[{"label": "x", "path": "/x"}, {"label": "y", "path": "/y"}, '
                                      '{"label": "z", "path": "/z"}]')
    assert [d.label for d in config.load(_write(tmp_path, GOOD)).disks] == ["x", "y", "z"]


@pytest.mark.parametrize(("name", "value", "pattern"), [
    ("HOARD_STORE", "three copies", r"^HOARD_STORE: store is a table or a list: give it as JSON"),
    ("HOARD_DISKS__0__LABEL", "x", r"^HOARD_DISKS__0__LABEL: disks is a list, which takes no key of its own; give "
                                   r"it whole as JSON in HOARD_DISKS"),
    ("HOARD_STORE__SHARD_SISE_MB", "1", r"store\.shard_sise_mb: unknown key; allowed here: shard_size_mb"),
])
def test_a_bad_environment_variable_is_one_line_naming_it(tmp_path: Path, monkeypatch, name: str, value: str,
                                                          pattern: str) -> None:
    """JSON that does not parse for a table (pydantic-settings raised its own SettingsError here,
    a traceback from every command), a key inside a list, an unknown key: one line each."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        config.load(_write(tmp_path, GOOD))
    assert "\n" not in exc.value.message and re.search(pattern, exc.value.message), exc.value.message


@pytest.mark.parametrize("env", [
    {"HOARD_REDIS_URL__FILE": "/run/secrets/redis"},  # a string takes no key: no key of hoard.toml
    {"HOARD_DATABASE_URL__X": "1", "HOARD_TEST_DATABASE_URL__X": "2"},
    {"HOARD_WEBHOOKS": "null", "HOARD_SOURCES": "null", "HOARD_GUI": "null"},  # JSON null: no value given
])
def test_environment_variables_that_give_no_key_leave_the_file_alone(tmp_path: Path, monkeypatch,
                                                                       env: dict[str, str]) -> None:
    """What pydantic-settings read as no value, the file's standing: a variable under a key that
    is a string (every command was refused: "redis_url: Input should be a valid string"), and a
    table or a list given as JSON null (was refused, or `HOARD_EMBEDDED=null` dropped the file's
    [embedded])."""
    text = GOOD + '[sources]\nmine = "reddit"\n[gui]\nport = 9000\n[[webhooks]]\nurl = "http://hook.lan/x"\n' \
                  'events = ["*"]\nsecret = "0123456789abcdef"\n'
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = config.load(_write(tmp_path, text))
    assert (cfg.database_url, cfg.redis_url, cfg.test_database_url) == (
        "postgresql:///hoard", "redis://127.0.0.1:6379/0", "postgresql:///hoard_test")
    assert (cfg.sources, cfg.gui.port, [w.url for w in cfg.webhooks]) == ({"mine": "reddit"}, 9000,
                                                                           ["http://hook.lan/x"])
    monkeypatch.setenv("HOARD_EMBEDDED", "null")
    assert config.load(_write(tmp_path, text + '[embedded]\nroot = "var"\n')).embedded is not None


BAD = [
    ("[store\n", r"not valid TOML: .*line 1"),
    (GOOD + "[store]\nwrite_ack = 0\n", r"store\.write_ack: Input should be greater than or equal to 1 \(got 0\)"),
    (GOOD + "[store]\nshard_size_mb = 'big'\n", r"store\.shard_size_mb: Input should be a valid integer"),
    (GOOD + "[store]\ncopy_of_raw = 4\n", r"copy_of_raw=4 needs that many disks; allowed 2\.\.3 with 3 disks"),
    (GOOD + "[store]\nwrite_ack = 3\ncopy_of_raw = 3\n", r"write_ack=3 must not exceed"),
    (GOOD + "[store]\nshard_sise_mb = 1\n", r"store\.shard_sise_mb: unknown key; allowed here: shard_size_mb, "),
    ("colour = 1\n" + GOOD, r"colour: unknown key; allowed here: disks, ssd, store, ingest, mount, gui, sources, embedded, database_url"),
    (GOOD.replace('label = "b"', 'label = "a"'), r"disk labels must be unique; repeated: a"),
    (GOOD.replace('label = "b"', 'label = "B B"'), r"disks\[1\]\.label: String should match pattern"),
    (GOOD.replace("[ssd.zones.3D]\nquota_gb = 1", ""), r"ssd: zones 3D missing"),
    (GOOD + "[ssd.thresholds]\nwarn = 0.95\n", r"ssd\.thresholds: must satisfy warn < deny < emergency"),
    (GOOD.replace('database_url = "postgresql:///hoard"', ""), r"database_url is required"),
    (GOOD.replace("[ssd.zones.3A]\nquota_gb = 1", "[ssd.zones.3A]\nquota_gb = -5"),
     r"ssd\.zones\.3A\.quota_gb: Input should be greater than 0 \(got -5\)"),
    (GOOD + "[ssd.zones.3E]\nquota_gb = 1\n", r"ssd\.zones\.3E"),
    (GOOD + "[worker]\nheartbeat_s = 19\nreap_after_s = 45\n",
     r"worker\.reap_after_s \+ worker\.heartbeat_s \(45 \+ 19\) must stay below 60"),
]


@pytest.mark.parametrize(("text", "pattern"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, pattern: str) -> None:
    """Each bad file gives a ConfigError: one line, the file's path, the key, what is allowed."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    msg = exc.value.message
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert re.search(pattern, msg), msg
    assert exc.value.exit_code == ExitCode.USAGE


def test_missing_and_unreadable_files(tmp_path: Path, monkeypatch) -> None:
    """No file anywhere, or a named file that is missing or not UTF-8: say how to make one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOARD_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"hoard init --embedded"):
        config.load(None)
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        config.load(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        config.load(tmp_path / "bin.toml")


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """`hoard health` with a bad file: exit 2, one line on stderr, no traceback."""
    path = _write(tmp_path, GOOD + "[store]\nwrite_ack = 'two'\n")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(path), "health"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "store.write_ack" in lines[0]
    assert "Traceback" not in res.stderr


def test_every_key_is_documented() -> None:
    """docs/config.md names every key of every section."""
    doc = (REPO / "docs" / "config.md").read_text()
    models = {"": config.Settings, "disks[].": config.DiskConfig, "ssd.": config.SSDConfig,
              "ssd.zones.<zone>.": config.ZoneConfig, "ssd.thresholds.": config.Thresholds,
              "store.": config.StoreConfig, "embedded.": config.EmbeddedConfig,
                  "ingest.": config.IngestConfig, "mount.": config.MountConfig,
              "actions.": config.ActionsConfig, "label_studio.": config.LabelStudioConfig,
              "gui.": config.GuiConfig, "gui.users[].": config.GuiUser, "webhooks[].": config.WebhookConfig,
              "api.": config.ApiConfig, "worker.": config.WorkerConfig,
              "search.": config.SearchConfig, "loader.": config.LoaderConfig}
    missing = [f"{prefix}{name}" for prefix, model in models.items() for name in model.model_fields
               if name != "source" and f"`{prefix}{name}`" not in doc]
    assert not missing, f"undocumented keys: {missing}"


@pytest.mark.parametrize("url, test_url", [
    ("postgresql:///hoard", "postgresql:///hoard_test"),
    ("postgresql://hoard@/hoard?host=%2Fvar%2Frun%20pg", "postgresql://hoard@/hoard_test?host=%2Fvar%2Frun%20pg"),
    ("postgresql://u:p@h:5432/my%20db?sslmode=require", "postgresql://u:p@h:5432/my%20db_test?sslmode=require"),
    ("postgresql://h?dbname=foo&sslmode=disable", "postgresql://h?dbname=foo_test&sslmode=disable"),
    ("postgres://h", "postgres://h/hoard_test"),
    ("host=/tmp dbname=x", "dbname=x_test host=/tmp"),
])
def test_the_test_database_is_the_working_one_with_test_appended(url: str, test_url: str) -> None:
    """Read as libpq reads it (a URI without libpq: the mount daemon does not load psycopg)."""
    got = config._derive_test_db_url(url)
    assert got == test_url
    want = psycopg.conninfo.conninfo_to_dict(url)
    want["dbname"] = f"{want.get('dbname') or 'hoard'}_test"
    assert psycopg.conninfo.conninfo_to_dict(got) == want


@pytest.mark.parametrize("url, test_url", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
    ("redis://h", "redis://h/1"),
    ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=1"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock?db=1"),
    ("rediss://u:p@h:1/2?db=5", "rediss://u:p@h:1/6"),
])
def test_the_test_redis_is_the_next_database(url: str, test_url: str) -> None:
    """The next database number, as redis-py reads the URL (`?db=` wins over the path)."""
    import redis.connection

    assert config._derive_test_redis_url(url) == test_url
    assert redis.connection.parse_url(test_url).get("db", 0) == redis.connection.parse_url(url).get("db", 0) + 1


def test_a_bad_redis_url_is_a_config_error(tmp_path: Path) -> None:
    for bad, why in (("http://h/0", "must start with redis://"), ("redis://h/abc", "is not a number")):
        with pytest.raises(ConfigError, match=why):
            config.load(_write(tmp_path, GOOD.replace("redis://127.0.0.1:6379/0", bad)))
