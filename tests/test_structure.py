"""Structure of the code, checked statically (ast, git; nothing of the package is imported):

1. the import graph of src/simcse_ops has no cycle (imports inside functions count);
2. `simcse_ops` is imported at module level only, in src/simcse_ops, stages/ and flows/;
3. every stage's deps in dvc.yaml cover the project files its entry module loads;
4. the md5 dvc.lock records for each code dep is that of the file (folder) at git HEAD;
5. no function in src/simcse_ops is longer than 80 lines, unless its docstring says why.

`python tests/dvc_deps_support.py` prints, per stage, the closure and what dvc.yaml misses.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from pathlib import Path

import pytest

from tests import dvc_deps_support as deps
from tests.dvc_deps_support import CODE_ROOTS, PACKAGE, ROOT

MAX_FUNCTION_LINES = 80


# --------------------------------------------------------------------------------------------
# 1. Import graph


def test_package_import_graph_is_acyclic():
    graph = deps.import_graph()
    assert f"{PACKAGE}.config" in graph, f"no modules found under {CODE_ROOTS[PACKAGE]}"
    cycles = deps.find_cycles(graph)
    sccs = [c for c in deps.strongly_connected(graph) if len(c) > 1]
    assert not cycles, (
        f"{len(cycles)} import cycle(s) between simcse_ops modules (imports inside functions "
        "count: they only defer the cycle). One shortest cycle per group of mutually dependent "
        "modules, with the import making each edge:\n\n"
        + "\n\n".join(deps.describe_cycle(graph, c) for c in cycles)
        + "\n\nMutually dependent groups: "
        + "; ".join("{" + ", ".join(deps.short(m) for m in comp) + "}" for comp in sccs)
    )


def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict:
    for rel, text in files.items():
        p = tmp_path / "src" / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    graph = {}
    for path in deps.code_files(CODE_ROOTS[PACKAGE], tmp_path):
        edges = graph.setdefault(deps.file_module(path), {})
        for imp in deps.scan_imports(path, tmp_path):
            for t in imp.edges:
                edges.setdefault(t, imp)
    return graph


def test_cycle_finder_sees_every_kind_of_import(tmp_path):
    """The checker itself: lazy, relative and `from package import module` imports all make
    edges; a package's own __init__ is no edge from its modules unless a name is taken from it."""
    graph = _graph_of(tmp_path, {
        "__init__.py": '__version__ = "1"\n',
        "a.py": "def f():\n    from simcse_ops import b\n",          # lazy, from-package-import-module
        "b.py": "from . import c\nfrom simcse_ops import __version__\n",  # relative; a name of __init__
        "c.py": "import simcse_ops.pkg.d\n",                             # dotted: pkg's __init__, then d
        "pkg/__init__.py": "from .d import X\n",
        "pkg/d.py": "from simcse_ops.pkg import e\nX = 1\n",              # sibling: no edge to pkg/__init__
        "pkg/e.py": "from simcse_ops.a import f\n",
    })
    s = {deps.short(k): sorted(deps.short(t) for t in v) for k, v in graph.items()}
    assert s == {
        PACKAGE: [],
        "a": ["b"],
        "b": ["c", PACKAGE],
        "c": ["pkg", "pkg.d"],
        "pkg": ["pkg.d"],
        "pkg.d": ["pkg.e"],
        "pkg.e": ["a"],
    }
    cycles = deps.find_cycles(graph)
    assert [" -> ".join(map(deps.short, c)) for c in cycles] == ["a -> b -> c -> pkg.d -> pkg.e -> a"]
    text = deps.describe_cycle(graph, cycles[0])
    assert f"a -> b: src/{PACKAGE}/a.py:2: from simcse_ops import b  (inside a function)" in text


def test_name_from_own_package_init_is_an_edge(tmp_path):
    graph = _graph_of(tmp_path, {
        "__init__.py": "",
        "pkg/__init__.py": "from simcse_ops.pkg.base import B\nREGISTRY = {}\n",
        "pkg/base.py": "from simcse_ops.pkg import REGISTRY\nB = 1\n",
    })
    cycles = deps.find_cycles(graph)
    assert [" -> ".join(map(deps.short, c)) for c in cycles] == ["pkg -> pkg.base -> pkg"]


# --------------------------------------------------------------------------------------------
# 2. Package imports at module level


def test_package_imported_at_module_level_only():
    offenders = [
        f"{imp.where}: {imp.statement}"
        for base in CODE_ROOTS.values()
        for path in deps.code_files(base)
        for imp in deps.scan_imports(path)
        if imp.in_function and imp.is_package_import
    ]
    assert not offenders, (
        f"{len(offenders)} simcse_ops import(s) inside a function in "
        f"{', '.join(str(b) for b in CODE_ROOTS.values())} (import at the top of the module; "
        "a lazy import to break a cycle hides the cycle — move the code instead; lazy imports "
        "of third-party packages are fine):\n  " + "\n  ".join(offenders)
    )


# --------------------------------------------------------------------------------------------
# 3. dvc.yaml deps cover each stage's code


def test_dvc_yaml_deps_cover_each_stage_closure():
    dvc_yaml = deps.load_dvc_yaml()
    stages = deps.expand_stages(dvc_yaml)
    assert stages, "dvc.yaml has no stages"
    missing = deps.missing_deps(dvc_yaml)
    assert not missing, (
        "dvc.yaml stages whose deps miss project files their entry module loads (a change to "
        "them would not rerun the stage). `python tests/dvc_deps_support.py` shows why each is "
        "loaded:\n" + "\n".join(f"  {stage}: {', '.join(files)}" for stage, files in missing.items())
    )


def _first(stages, foreach: bool):
    """A stage (plain or foreach) whose deps list its entry file itself."""
    for s in stages:
        entry = deps.module_file(s.entry).as_posix() if s.entry else None
        if s.foreach == foreach and entry in s.raw_deps:
            return s, entry
    pytest.skip(f"no {'foreach' if foreach else 'plain'} stage lists its entry file as a dep")


@pytest.mark.parametrize("foreach", [False, True], ids=["stage", "foreach-stage"])
def test_dvc_deps_check_reports_a_removed_dep(foreach):
    """Removing one needed dep from one stage of the parsed dvc.yaml makes the checker report
    exactly that stage and that file."""
    dvc_yaml = deps.load_dvc_yaml()
    before = deps.missing_deps(dvc_yaml)
    stage, entry = _first(deps.expand_stages(dvc_yaml), foreach)
    broken = copy.deepcopy(dvc_yaml)
    body = broken["stages"][stage.group]
    body = body["do"] if foreach else body
    body["deps"] = [d for d in body["deps"] if d != entry]
    after = deps.missing_deps(broken)
    name = f"{stage.group}@*" if foreach else stage.group
    new = {s: sorted(set(f) - set(before.get(s, []))) for s, f in after.items()}
    new = {s: f for s, f in new.items() if f}
    assert new == {name: [entry]}, f"removed {entry} from {stage.group}; the checker reports {after}"


def test_dvc_deps_checker_on_a_small_project(tmp_path):
    """foreach expansion, ${...} from params.yaml, folder deps, packages' __init__, lazy imports,
    and `if __name__ == "__main__":` blocks (they run in the entry module only)."""
    files = {
        "stages/__init__.py": "",
        "stages/run.py": "from simcse_ops import a\n\ndef main():\n    import simcse_ops.pkg.c\n\n"
                         "if __name__ == '__main__':\n    from simcse_ops.main import run\n",
        f"src/{PACKAGE}/__init__.py": "",
        f"src/{PACKAGE}/a.py": "from .b import x\n",
        f"src/{PACKAGE}/b.py": "import json\nx = 1\nif __name__ == '__main__':\n    from . import unused\n",
        f"src/{PACKAGE}/main.py": "",
        f"src/{PACKAGE}/unused.py": "",
        f"src/{PACKAGE}/pkg/__init__.py": "",
        f"src/{PACKAGE}/pkg/c.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "params.yaml").write_text("code: src\nvariants: {v1: {}, v2: {}}\n")
    dvc_yaml = {
        "stages": {
            "one": {"cmd": "python -m stages.run --x 1", "deps": [
                "stages", f"${{code}}/{PACKAGE}/__init__.py", f"src/{PACKAGE}/a.py", f"src/{PACKAGE}/pkg"]},
            "many": {"foreach": "${variants}", "do": {"cmd": "python stages/run.py --v ${key}", "deps": [
                "stages/run.py", f"src/{PACKAGE}/b.py", f"src/{PACKAGE}/pkg/c.py", "data/${key}"]}},
        }
    }
    stages = deps.expand_stages(dvc_yaml, tmp_path)
    assert [(s.name, s.entry, s.script) for s in stages] == [
        ("one", "stages.run", False), ("many@v1", "stages.run", True), ("many@v2", "stages.run", True)]
    assert stages[2].deps[-1] == "data/v2"
    assert deps.missing_deps(dvc_yaml, tmp_path) == {
        "one": [f"src/{PACKAGE}/b.py", f"src/{PACKAGE}/main.py"],
        # `python stages/run.py` runs the file as a script: stages/__init__.py is not loaded
        "many@*": [f"src/{PACKAGE}/__init__.py", f"src/{PACKAGE}/a.py", f"src/{PACKAGE}/main.py",
                   f"src/{PACKAGE}/pkg/__init__.py"],
    }
    dvc_yaml["stages"]["one"]["cmd"] = "echo nothing to run"
    assert deps.missing_deps(dvc_yaml, tmp_path)["one"][0].startswith("<no `python -m <module>`")


# --------------------------------------------------------------------------------------------
# 4. dvc.lock describes the committed code


def test_dvc_lock_code_hashes_match_git_head():
    reason = deps.git_available()
    if reason:
        pytest.skip(f"dvc.lock is compared with git HEAD: {reason}")
    code = deps.lock_code_deps()
    assert code, "dvc.lock records no code deps (.py files or folders of code)"
    mismatches = deps.lock_mismatches()
    assert not mismatches, (
        f"{len(mismatches)} code dep(s) in dvc.lock do not match git HEAD: the lock does not describe "
        "the committed code (run the stages, or `dvc commit` when the change cannot alter the "
        "outputs, and commit dvc.lock with the code):\n  " + "\n  ".join(mismatches)
    )


def test_lock_check_reports_each_mismatch(tmp_path):
    """In a scratch git repo: a stale file md5, a stale folder md5 and a dep gone from HEAD are
    reported; a matching file and a data dep are not."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    files = {"stages/s.py": b"print(1)\n", f"src/{PACKAGE}/readers/a.py": b"A = 1\n",
             f"src/{PACKAGE}/readers/b.py": b"B = 2\n", "data/x.csv": b"1\n"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "x")
    good = hashlib.md5(b"print(1)\n").hexdigest()
    readers = deps.dvc_md5(f"src/{PACKAGE}/readers", {k: v for k, v in files.items()})
    (tmp_path / "dvc.lock").write_text(f"""\
schema: '2.0'
stages:
  s@v:
    deps:
    - {{path: stages/s.py, hash: md5, md5: {good}, size: 9}}
    - {{path: src/{PACKAGE}/readers, hash: md5, md5: 0123.dir, size: 12, nfiles: 2}}
    - {{path: src/{PACKAGE}/gone.py, hash: md5, md5: abcd, size: 1}}
    - {{path: data/x.csv, hash: md5, md5: ffff, size: 2}}
""")
    assert deps.git_available(tmp_path) is None
    assert deps.lock_mismatches(tmp_path) == [
        f"s@v: src/{PACKAGE}/readers: lock md5 0123.dir != HEAD md5 {readers}",
        f"s@v: src/{PACKAGE}/gone.py: lock md5 abcd != HEAD md5 (absent at HEAD)",
    ]


def test_dvc_md5_is_computed_as_dvc_does(tmp_path):
    """Our md5 of a file and of a folder (`<md5>.dir`) equals the one DVC 3 builds (`hash: md5`)."""
    build = pytest.importorskip("dvc_data.hashfile.build")
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    contents = {"pkg/a.py": b"x = 1\n", "pkg/sub/b.py": b"y = 2\r\n", "pkg/sub/c.txt": b"\xff\x00"}
    for rel, data in contents.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    fs = LocalFileSystem()
    odb = HashFileDB(fs, str(tmp_path / "odb"))
    for path in ("pkg", "pkg/sub", "pkg/sub/b.py"):
        _, _, obj = build.build(odb, str(tmp_path / path), fs, "md5", dry_run=True)
        assert deps.dvc_md5(path, contents) == obj.hash_info.value, path
    assert deps.dvc_md5("pkg/a.py", contents) == hashlib.md5(b"x = 1\n").hexdigest()
    assert deps.dvc_md5("nope", contents) is None


# --------------------------------------------------------------------------------------------
# 5. Function length


def _docstring_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = fn.body[0] if fn.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def _long_reason(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    doc = ast.get_docstring(fn) or ""
    for line in doc.splitlines():
        if line.strip().startswith("Long:") and line.strip()[len("Long:"):].strip():
            return line.strip()
    return None


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, line, length) of every function and method; length counts from the
    `def` line to the last line, decorators and the docstring excluded."""
    tree = deps._parse(Path(path), ROOT)  # cached: parsed once for all the checks
    out = []
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and not _long_reason(child):
                    length = child.end_lineno - child.lineno + 1 - _docstring_lines(child)
                    out.append((name, child.lineno, length))
                stack.append((child, name + "."))
            else:
                stack.append((child, prefix))
    return out


def test_functions_are_at_most_80_lines():
    offenders = [
        f"{path}:{line}: {name}: {length} lines"
        for path in deps.code_files(CODE_ROOTS[PACKAGE])
        for name, line, length in sorted(function_lengths(path), key=lambda f: f[1])
        if length > MAX_FUNCTION_LINES
    ]
    assert not offenders, (
        f"{len(offenders)} function(s) in src/{PACKAGE} longer than {MAX_FUNCTION_LINES} lines "
        "(from `def` to the last line, docstring and decorators excluded). Split them, or give "
        "the reason in the docstring on a line starting with `Long:`:\n  "
        + "\n  ".join(offenders)
    )
