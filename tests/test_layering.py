"""docs/ARCHITECTURE.md's package map holds in the code: every import points down the map, no
module imports itself back through others, and a function-level import says why it waits.

The map is the ```layers block of the document, read here, so the drawing and the test are
one thing. Each line is `unit … → the units it may import`; a module belongs to the unit that
is its longest prefix (`hoardfs.cli.demo` → `hoardfs.cli`, `hoardfs.fsd.store` → `fsd`). Units on one line may
import each other; a line may only name units of lines below it.

Two narrower rules keep the GUI a thin layer (docs/ARCHITECTURE.md, Layers): the command line
takes nothing from `gui` but the entry point `hoard gui` serves, and `gui` reaches the store only
through the few fsd modules made for it, never its internals or the libraries behind them.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hoardfs.fsd.core import backend
from hoardfs.fsd.core.disks import LocalDisk

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
#: the folders under the one import root, each reached as `hoardfs.<folder>`
PACKAGES = ("fsd", "jobs", "sql", "adapters", "datasets", "gui", "base", "cli")
ROOT = "hoardfs"
#: the comment a function-level import carries (on its line, or on the line above its group)
DEFERRED = "# deferred:"
#: what the command line may take from the GUI: the app `hoard gui` serves, inside that command
CLI_MAY_TAKE_FROM_GUI = {"hoardfs.gui.app"}
#: the one command module that may take it: `hoard gui`'s
CLI_GUI_COMMAND = "hoardfs.cli.gui"
#: the fsd modules gui may import: the leaf base and the store's reports made for it (health,
#: index copies, thumbnails) — not the store, its index, disks or scrubber (`jobs` and these
#: modules open the store; the pages show what they return)
GUI_MAY_TAKE_FROM_FSD = ("hoardfs.base", "hoardfs.fsd.maintenance.health", "hoardfs.fsd.maintenance.reindex", "hoardfs.fsd.outputs.thumbs")
#: libraries behind the store, the job queue and the logins that gui must not use itself (it
#: calls the hoardfs module that does): LMDB, Pillow, RQ (rq-dashboard is `rq_dashboard`), argon2
GUI_MUST_NOT_USE = ("lmdb", "PIL", "rq", "argon2")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a package for `from pkg import name` of a non-module)
    line: int
    where: str  # "module" | "function" | "typing" (under `if TYPE_CHECKING:`)


def layer_map() -> list[tuple[list[str], set[str]]]:
    """The rows of the ```layers block: (units on the row, units they may import)."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no ```layers block"
    rows = []
    for line in block.group(1).splitlines():
        if line.strip():
            left, arrow, right = line.partition("→")
            assert arrow, f"a ```layers line needs `→`: {line!r}"
            rows.append((left.split(), set(right.split())))
    return rows


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join((ROOT, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(mods: dict[str, Path]) -> list[Import]:
    """Every import of a hoardfs module, resolved to the module it loads."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]

        def visit(node: ast.AST, where: str, mod: str = mod, package: str = package) -> None:
            for child in ast.iter_child_nodes(node):
                inner = where
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and where == "module":
                    inner = "function"
                elif isinstance(child, ast.If) and _is_type_checking(child.test):
                    inner = "typing"
                names = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        base = ".".join(up + ([child.module] if child.module else []))
                    names = [f"{base}.{a.name}" for a in child.names]
                for name in names:
                    target = resolve(name) if name.startswith(ROOT + ".") else None
                    if target and target != mod:
                        out.append(Import(mod, target, child.lineno, inner))
                visit(child, inner)

        visit(ast.parse(path.read_text(), str(path)), "module")
    return out


def unit_of(module: str, units: list[str]) -> str:
    return max((u for u in units if module == u or module.startswith(u + ".")), key=len)


def test_the_map_is_a_layering() -> None:
    """The ```layers block covers every package, and each line names only units of lines below it."""
    rows = layer_map()
    seen: list[str] = []
    for units, allowed in reversed(rows):
        assert allowed <= set(seen), f"{' '.join(units)} → {' '.join(sorted(allowed - set(seen)))}: not below it"
        seen += units
    folders = {f"{ROOT}.{p}" for p in PACKAGES}
    assert folders <= set(seen), f"folders missing from the map: {folders - set(seen)}"
    assert len(seen) == len(set(seen)), "a unit is on two lines"


def test_each_part_of_fsd_has_its_row() -> None:
    """Every sub-package of fsd and every module at its top is a unit of the map (the bare
    `fsd` unit holds its __init__ alone), so the map says where each part stands."""
    units = {u for row, _ in layer_map() for u in row}
    fsd = REPO / "fsd"
    parts = {f"hoardfs.fsd.{p.parent.name}" for p in fsd.glob("*/__init__.py")} | {
        f"hoardfs.fsd.{p.stem}" for p in fsd.glob("*.py") if p.stem != "__init__"}
    assert parts <= units, f"parts of fsd without a row in {DOC.name}'s ```layers block: {sorted(parts - units)}"


def test_imports_point_down() -> None:
    """No module imports a unit above its own (TYPE_CHECKING imports included)."""
    rows = layer_map()
    units = [u for row, _ in rows for u in row]
    may = {u: allowed | set(row) for row, allowed in rows for u in row}
    mods = modules()
    upward = [f"{mods[i.source].relative_to(REPO)}:{i.line}: {i.source} imports {i.target} "
              f"({unit_of(i.source, units)} may import only {' '.join(sorted(may[unit_of(i.source, units)]))})"
              for i in imports(mods) if unit_of(i.target, units) not in may[unit_of(i.source, units)]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_folders_stack_without_a_cycle() -> None:
    """Between the folders under hoardfs (cli, gui, jobs, adapters, datasets, fsd, sql, base) the
    imports that run form no cycle: the tree is the layering, not only the modules inside it."""
    folder = {f"{ROOT}.{p}": p for p in PACKAGES}
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for i in imports(modules()):
        a, b = (folder[".".join(m.split(".")[:2])] for m in (i.source, i.target))
        if i.where != "typing" and a != b:
            graph[a].add(b)
    cycles = [" → ".join(_path_back(graph, c)) for c in _cycles(graph)]
    assert not cycles, "folders that import each other:\n" + "\n".join(cycles)


def test_the_leaf_base_is_a_leaf() -> None:
    """Reaching hoardfs.base runs hoardfs/__init__.py first: it must import nothing, or the base would not be a leaf."""
    assert not [n for n in ast.walk(ast.parse((REPO / "hoardfs" / "__init__.py").read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_no_import_cycles() -> None:
    """No module reaches itself through imports that run (module- or function-level; a
    TYPE_CHECKING import runs never). Importing `a.b.c` also runs `a` and `a.b`, so those count."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for i in imports(mods):
        if i.where == "typing":
            continue
        parts = i.target.split(".")
        for k in range(1, len(parts) + 1):
            target = ".".join(parts[:k])
            # a module's own packages are already running when it imports a sibling
            if target in mods and target != i.source and not i.source.startswith(target + "."):
                graph[i.source].add(target)
    cycles = [" → ".join(_path_back(graph, c)) + (f" (all of {', '.join(c)} reach each other)" if len(c) > 2 else "")
              for c in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _path_back(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module (breadth-first, inside the component)."""
    start, inside = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & inside):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in came_from:
                    came_from[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_function_level_imports_say_why() -> None:
    """An import inside a function defers a heavy module (pyfuse3, rq, the store's modules for the
    CLI's start, …) and says so: `# deferred: <reason>` on its line or above its group of imports."""
    silent = []
    for path in modules().values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        in_functions = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        import_lines = {k for n in in_functions for k in range(n.lineno, n.end_lineno + 1)}
        for node in {id(n): n for n in in_functions}.values():
            if any(DEFERRED in lines[k - 1] for k in range(node.lineno, node.end_lineno + 1)):
                continue
            above = node.lineno - 1
            while above in import_lines or (not lines[above - 1].strip() and above - 1 in import_lines):
                above -= 1  # the other imports of the same group, blank lines between them included
            comment = []  # the comment lines right above the group
            while above >= 1 and lines[above - 1].strip().startswith("#"):
                comment.append(lines[above - 1])
                above -= 1
            if not any(line.strip().startswith(DEFERRED) for line in comment):
                silent.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not silent, ("function-level imports without a `# deferred: <reason>` comment (move them to the "
                        "top of the module, or say what they defer):\n" + "\n".join(silent))


def test_the_cli_takes_only_the_gui_entry_point() -> None:
    """`hoard users` and `hoard demo` manage logins through `hoardfs.jobs.users`, not the GUI: the
    command line imports nothing of `gui` but `hoardfs.gui.app`, and that only in `hoardfs.cli.gui`, the
    module of the `hoard gui` command (a command's module loads only when it runs), so no
    other command loads NiceGUI."""
    mods = modules()
    bad = [f"{mods[i.source].relative_to(REPO)}:{i.line}: {i.source} imports {i.target}"
           + ("" if i.target in CLI_MAY_TAKE_FROM_GUI else f" (only {', '.join(sorted(CLI_MAY_TAKE_FROM_GUI))})")
           + ("" if i.source == CLI_GUI_COMMAND else f" outside {CLI_GUI_COMMAND}")
           for i in imports(mods)
           if (i.source == "hoardfs.cli.__main__" or i.source.startswith("hoardfs.cli"))
           and (i.target == "hoardfs.gui" or i.target.startswith("hoardfs.gui."))
           and (i.target not in CLI_MAY_TAKE_FROM_GUI or i.source != CLI_GUI_COMMAND)]
    assert not bad, "the command line imports the GUI:\n" + "\n".join(bad)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_command_loads_only_its_own_module() -> None:
    """`hoard put` (and `get`, `mount`, `--version`, `--help`) start without NiceGUI, RQ, Redis, the
    database client, jobs or sql: the root of the command line imports a command's module
    only when that command runs (hoardfs.cli.COMMANDS). Checked in a real process."""
    # (pydantic_settings: only the previous release's code, which tests/test_formats.py runs, uses it)
    heavy = ("gui", "nicegui", "rq", "redis", "psycopg", "jobs", "sql", "adapters", "PIL", "pyfuse3", "trio",
             "pydantic_settings")
    code = ("import sys\n"
            "from hoardfs.cli import app\n"
            "try:\n"
            "    app(sys.argv[1:], prog_name='hoard')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            f"print(sorted({{m.removeprefix('hoardfs.').split('.')[0] for m in sys.modules}} & set({heavy!r})), "
            "file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    for args in (["--help"], ["--version"], ["put", "--help"], ["get", "--help"], ["mount", "--help"]):
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip().splitlines()[-1] == "[]", (args, res.stderr)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_hoard_users_loads_no_gui() -> None:
    """`hoard users hash` runs without importing any `gui` module or NiceGUI (what the command
    line loads, checked in a real process, not only read from its source)."""
    code = ("import sys\n"
            "from hoardfs.cli import app\n"
            "try:\n"
            "    app(['users', 'hash', '--password-stdin'])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.removeprefix('hoardfs.').split('.')[0] in ('gui', 'nicegui')), "
            "file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-c", code], input="a-long-enough-password\n", capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("$argon2id$"), res.stderr
    assert res.stderr.strip().splitlines()[-1] == "[]", res.stderr


def _third_party_imports(path: Path) -> list[tuple[str, int]]:
    """(top-level name, line) of every import in a file that is not of hoardfs itself."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.module.split(".")[0], node.lineno))
    return [(name, line) for name, line in out if name != ROOT]


def test_the_gui_does_not_reach_into_the_store() -> None:
    """gui/ imports from fsd only the leaf base and the reports made for it (GUI_MAY_TAKE_FROM_FSD),
    and none of the libraries behind the store, the queues or the logins (GUI_MUST_NOT_USE): the
    work they do belongs in fsd, jobs or sql, where the command line and the jobs can use it too."""
    mods = modules()
    bad = [f"{mods[i.source].relative_to(REPO)}:{i.line}: {i.source} imports {i.target}"
           for i in imports(mods)
           if i.source.startswith("hoardfs.gui") and i.target.startswith("hoardfs.fsd")
           and not any(i.target == m or i.target.startswith(m + ".") for m in GUI_MAY_TAKE_FROM_FSD)]
    bad += [f"{path.relative_to(REPO)}:{line}: imports {name}"
            for mod, path in mods.items() if mod == "hoardfs.gui" or mod.startswith("hoardfs.gui.")
            for name, line in _third_party_imports(path) if name in GUI_MUST_NOT_USE]
    assert not bad, ("the GUI reaches into the store or its libraries (move the work into fsd/jobs/sql "
                     "and call it):\n" + "\n".join(bad))


#: the one gui module that runs blocking work through NiceGUI's pools (hoardfs.gui.context.in_thread)
#: and registers pages with ui.page (hoardfs.gui.context.page)
GUI_POOL_CALLS_IN = "hoardfs.gui.context"


def test_the_gui_runs_blocking_work_only_through_in_thread() -> None:
    """NiceGUI's run.io_bound / run.cpu_bound answer None without running the call while the app
    stops; only hoardfs.gui.context.in_thread calls them, and raises AppStopping instead, which the pages
    (all registered through hoardfs.gui.context.page, never ui.page), NiceGUI's timers and its event
    handlers end on quietly: no page reads that None as an answer, and none has to remember to
    check for it."""
    mods = modules()
    bad = []
    for mod, path in mods.items():
        if not (mod == "hoardfs.gui" or mod.startswith("hoardfs.gui.")) or mod == GUI_POOL_CALLS_IN:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("nicegui", "nicegui.run") and any(
                    a.name in ("run", "io_bound", "cpu_bound") for a in node.names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: imports NiceGUI's run")
            elif isinstance(node, ast.Attribute) and node.attr in ("io_bound", "cpu_bound"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: calls .{node.attr}")
            elif (isinstance(node, ast.Attribute) and node.attr == "page" and isinstance(node.value, ast.Name)
                  and node.value.id == "ui"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: registers a page with ui.page")
    assert not bad, "use hoardfs.gui.context.in_thread and hoardfs.gui.context.page:\n" + "\n".join(bad)


def test_only_sql_writes_sql() -> None:
    """`sql` is the one package that holds SQL text (docs/ARCHITECTURE.md): no module
    elsewhere passes a query to `execute` — they call a function of `sql` that does."""
    found = []
    for mod, path in modules().items():
        if mod == "hoardfs.sql" or mod.startswith("hoardfs.sql."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("execute", "executemany") and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp))):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not found, "SQL outside sql/ (move it into a function of sql/):\n" + "\n".join(found)


#: what a disk is called where its shards are reached (a name, or `store.disks[...]`)
DISK_NAMES = {"disk", "src", "dst", "dest", "source", "target"}
#: the modules that reach a disk's `root`: the local backend and what it keeps beside its shards
#: (fsd/core/beside.py: every other caller goes through `disk.beside`, which an S3 disk has too)
DISK_ROOT_FOR = {
    "hoardfs.fsd.core.disks": "the local backend itself",
    "hoardfs.fsd.core.beside": "the files a local disk keeps beside its shards (every other module uses `disk.beside`)",
}


def _is_disk(node: ast.expr, names: set[str]) -> bool:
    return ((isinstance(node, ast.Name) and (node.id in names or node.id.endswith("disk")))
            or (isinstance(node, ast.Attribute) and node.attr == "disk")
            or (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "disks"))


def test_only_the_local_backend_reaches_shard_files() -> None:
    """Shards are read, written, sealed, listed and deleted through the backend's methods
    (fsd/core/backend.py, which an S3 backend implements too): no module but hoardfs.fsd.core.disks
    reaches a shard's file through `disk.find` / `disk.path`, names the shard layout (a
    `shards` folder, the `.shard` / `.open` names), or takes a disk's `root` unless it keeps
    files of its own beside the shards (DISK_ROOT_FOR)."""
    found = []
    for mod, path in modules().items():
        if mod == "hoardfs.fsd.core.disks":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("find", "path") and _is_disk(node.func.value, DISK_NAMES)):
                found.append(f"{where}: {ast.unparse(node)} (use the backend's methods)")
            elif (isinstance(node, ast.Attribute) and node.attr == "root" and mod not in DISK_ROOT_FOR
                  and _is_disk(node.value, DISK_NAMES | {"d"})):
                found.append(f"{where}: {ast.unparse(node)} (a disk's files are the backend's)")
            elif isinstance(node, ast.Constant) and node.value in (".shard", ".open"):
                found.append(f"{where}: {node.value!r} (the shard layout is hoardfs.fsd.core.disks')")
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                  and node.right.value == "shards"):
                found.append(f"{where}: {ast.unparse(node)} (the shard layout is hoardfs.fsd.core.disks')")
    assert not found, "shard files reached outside the backend:\n" + "\n".join(found)


def test_the_local_disk_meets_the_backend_contract() -> None:
    """Every method of fsd/core/backend.py's protocols is LocalDisk's, with the same parameters."""
    wrong = []
    for proto in (backend.ShardBackend, backend.LocalFiles):
        for name, fn in vars(proto).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                have = getattr(LocalDisk, name, None)
                if have is None or list(inspect.signature(have).parameters) != list(inspect.signature(fn).parameters):
                    wrong.append(f"{proto.__name__}.{name}{inspect.signature(fn)}: LocalDisk has "
                                 f"{name + str(inspect.signature(have)) if have else 'none'}")
    assert not wrong, "\n".join(wrong)
