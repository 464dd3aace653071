"""Static structure of the code, for tests/test_structure.py and for fixing dvc.yaml by hand.

Everything here reads source files with `ast` (nothing is imported), so it is fast and works on
code that does not import.

- `scan_imports(path)`: every import statement of a file, at module level or inside a function,
  with the project-local modules it loads.
- `import_graph()` / `find_cycles()`: the graph between `simcse_ops` modules and its cycles.
- `closure(entry)`: the project-local files a stage's entry module loads, transitively.
- `expand_stages(dvc_yaml)` / `missing_deps(dvc_yaml)`: dvc.yaml's stages (`foreach` expanded) and
  the files of each stage's closure that no dep covers.
- `lock_mismatches()`: code deps whose md5 in dvc.lock differs from the file (or folder) at git HEAD.

Script mode prints, per stage, the closure and what dvc.yaml misses:

    python tests/dvc_deps_support.py            # every stage
    python tests/dvc_deps_support.py train      # some stages
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "simcse_ops"
# Top-level module name -> its folder: the project's own importable code.
CODE_ROOTS = {PACKAGE: Path("src") / PACKAGE, "stages": Path("stages"), "flows": Path("flows")}


# --------------------------------------------------------------------------------------------
# Modules and files


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The repo-relative file of a project-local module (`simcse_ops.readers` ->
    src/simcse_ops/readers/__init__.py), or None when it is not one."""
    top, _, rest = module.partition(".")
    base = CODE_ROOTS.get(top)
    if base is None:
        return None
    folder = base.joinpath(*rest.split(".")) if rest else base
    if (root / folder / "__init__.py").is_file():
        return folder / "__init__.py"
    if rest and (root / folder.with_suffix(".py")).is_file():
        return folder.with_suffix(".py")
    return None


def file_module(path: Path) -> str:
    """The module name of a repo-relative file (src/simcse_ops/readers/__init__.py -> simcse_ops.readers)."""
    for top, base in CODE_ROOTS.items():
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        parts = [top, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)
    raise ValueError(f"{path}: not under {', '.join(str(b) for b in CODE_ROOTS.values())}")


def ancestors(module: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`]: the packages Python imports before `a.b.c`."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def code_files(base: Path, root: Path = ROOT) -> list[Path]:
    """Repo-relative .py files under `base` (no caches)."""
    return sorted(
        p.relative_to(root) for p in (root / base).rglob("*.py") if "__pycache__" not in p.parts
    )


# --------------------------------------------------------------------------------------------
# Imports


@dataclass(frozen=True)
class Import:
    """One import statement, resolved."""

    file: Path  # repo-relative
    line: int
    statement: str  # `from simcse_ops.files import write_json`
    in_function: bool  # inside a def / lambda (runs when called, not on import)
    type_checking: bool  # under `if TYPE_CHECKING:` (never runs)
    main_guard: bool  # under `if __name__ == "__main__":` (runs only in the entry module)
    targets: tuple[str, ...]  # the module(s) named, relative ones resolved (`simcse_ops.files`)
    modules: tuple[str, ...]  # every project-local module it loads, ancestors first
    edges: tuple[str, ...]  # the modules it may have to initialise: `modules` less the
    # packages that are necessarily already importing (the importer's own ancestors), unless a
    # name is taken from that package's __init__

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def is_package_import(self) -> bool:
        """Whether it imports (from) the `simcse_ops` package or one of its modules."""
        return any(t == PACKAGE or t.startswith(PACKAGE + ".") for t in self.targets)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool, bool]]:
    """(import node, inside a function, under `if TYPE_CHECKING:`, under a module-level
    `if __name__ == "__main__":`), in source order."""
    stack: list[tuple[ast.AST, bool, bool, bool]] = [(tree, False, False, False)]
    found = []
    while stack:
        node, in_function, type_checking, main = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, in_function, type_checking, main))
            continue
        fn = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack += [(c, fn, True, main) for c in node.body]
            stack += [(c, fn, type_checking, main) for c in node.orelse]
        elif isinstance(node, ast.If) and not in_function and _is_main_guard(node.test):
            stack += [(c, fn, type_checking, True) for c in node.body]
            stack += [(c, fn, type_checking, main) for c in node.orelse]
        else:
            stack += [(c, fn, type_checking, main) for c in ast.iter_child_nodes(node)]
    found.sort(key=lambda t: (t[0].lineno, t[0].col_offset))
    yield from found


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    parts = importer.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: dvc.lock is large
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)


@lru_cache(maxsize=None)
def _parse(path: Path, root: Path) -> ast.Module:
    return ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))


def scan_imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import statement in a repo-relative file, with the project-local modules it loads."""
    return list(_scan_imports(Path(path), root))


@lru_cache(maxsize=None)
def _scan_imports(path: Path, root: Path) -> tuple[Import, ...]:
    importer = file_module(path)
    is_package = path.name == "__init__.py"
    own = {*ancestors(importer), importer}  # already importing when this file runs
    out = []
    for node, in_function, type_checking, main_guard in _imports(_parse(path, root)):
        loads: list[str] = []  # modules loaded as such
        targets: list[str] = []
        names_from: str | None = None  # a package whose __init__ must provide a name
        if isinstance(node, ast.Import):
            for alias in node.names:
                loads += [*ancestors(alias.name), alias.name]
                targets.append(alias.name)
        else:
            base = (
                _resolve_relative(importer, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            loads += [*ancestors(base), base]
            targets.append(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and module_file(sub, root) is not None:
                    loads.append(sub)
                else:
                    names_from = base
        local = tuple(dict.fromkeys(m for m in loads if module_file(m, root) is not None))
        edges = tuple(m for m in local if m not in own or m == names_from)
        out.append(
            Import(
                file=path,
                line=node.lineno,
                statement=ast.unparse(node),
                targets=tuple(targets),
                in_function=in_function,
                type_checking=type_checking,
                main_guard=main_guard,
                modules=local,
                edges=edges,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The package's import graph


def import_graph(root: Path = ROOT) -> dict[str, dict[str, Import]]:
    """module -> {imported module -> the first import statement making that edge}, between the
    modules of src/simcse_ops (imports inside functions included; `if TYPE_CHECKING:` ones,
    which never run, left out)."""
    graph: dict[str, dict[str, Import]] = {}
    for path in code_files(CODE_ROOTS[PACKAGE], root):
        mod = file_module(path)
        edges = graph.setdefault(mod, {})
        for imp in scan_imports(path, root):
            if imp.type_checking:
                continue
            for target in imp.edges:
                if target.split(".")[0] == PACKAGE:
                    edges.setdefault(target, imp)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    out.append(sorted(comp))
    return out


def _shortest_cycle(graph: Mapping[str, Iterable[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first node: [a, b, ..., a]."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in seen:
                    seen.add(child)
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in component {comp}")


def find_cycles(graph: Mapping[str, Mapping[str, Import]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component that has one."""
    cycles = []
    for comp in strongly_connected(graph):
        if len(comp) > 1 or comp[0] in graph.get(comp[0], {}):
            cycles.append(_shortest_cycle(graph, comp))
    return cycles


def short(module: str) -> str:
    return module[len(PACKAGE) + 1 :] if module.startswith(PACKAGE + ".") else module


def describe_cycle(graph: Mapping[str, Mapping[str, Import]], cycle: list[str]) -> str:
    """`encoder -> registry -> encoder` and, under it, the import making each edge."""
    head = " -> ".join(short(m) for m in cycle)
    steps = [
        f"    {short(a)} -> {short(b)}: {graph[a][b].where}: {graph[a][b].statement}"
        + ("  (inside a function)" if graph[a][b].in_function else "")
        for a, b in zip(cycle, cycle[1:])
    ]
    return "\n".join([head, *steps])


# --------------------------------------------------------------------------------------------
# Closure of a stage's entry module


def closure(entry_module: str, root: Path = ROOT, script: bool = False) -> dict[Path, list[Import]]:
    """Every project-local file that running `python -m entry_module` may load (imports inside
    functions included: they run; `if TYPE_CHECKING:` left out), each with the imports that
    pull it in (empty for the entry and its packages). `script`: run as `python path/to/file.py`,
    which does not import the file's packages. A `if __name__ == "__main__":` block counts in
    the entry module only."""
    first = [entry_module] if script else [*ancestors(entry_module), entry_module]
    todo = [module_file(m, root) for m in first if module_file(m, root) is not None]
    if module_file(entry_module, root) is None:
        raise ValueError(f"{entry_module}: not a module of the project ({', '.join(CODE_ROOTS)})")
    found: dict[Path, list[Import]] = {p: [] for p in todo}
    entry_file = module_file(entry_module, root)
    while todo:
        path = todo.pop()
        for imp in scan_imports(path, root):
            if imp.type_checking or (imp.main_guard and path != entry_file):
                continue
            for mod in imp.modules:
                target = module_file(mod, root)
                if target not in found:
                    found[target] = []
                    todo.append(target)
                found[target].append(imp)
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------------------------
# dvc.yaml


_VAR = re.compile(r"\$\{\s*([^}]+?)\s*\}")


def _lookup(ctx: Mapping[str, Any], dotted: str) -> Any:
    value: Any = ctx
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(dotted)
    return value


def interpolate(value: Any, ctx: Mapping[str, Any]) -> Any:
    """DVC's `${...}` templating, enough for dvc.yaml: a whole-string `${x}` keeps x's type;
    an unknown name is left as written."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value.strip())
        if whole:
            try:
                return _lookup(ctx, whole.group(1))
            except KeyError:
                return value

        def sub(m: re.Match) -> str:
            try:
                return str(_lookup(ctx, m.group(1)))
            except KeyError:
                return m.group(0)

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, ctx) for k, v in value.items()}
    return value


@dataclass
class Stage:
    name: str  # `ingest`, `train@sup-nli`
    group: str  # the dvc.yaml entry: `ingest`, `train`
    cmd: list[str]
    deps: list[str]  # repo-relative, posix, interpolated
    entry: str | None = None  # `stages.train`
    script: bool = False  # run as `python stages/train.py`, not `python -m stages.train`
    entry_error: str | None = None
    foreach: bool = False
    raw_deps: list[str] = field(default_factory=list)


def load_dvc_yaml(root: Path = ROOT) -> dict:
    return load_yaml(root / "dvc.yaml")


def _context(dvc_yaml: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """What `${...}` sees: params.yaml (DVC's default vars file) and dvc.yaml's `vars`."""
    ctx: dict[str, Any] = {}
    files = []
    if (root / "params.yaml").is_file():
        files.append("params.yaml")
    for v in dvc_yaml.get("vars") or []:
        if isinstance(v, str):
            files.append(v)
        elif isinstance(v, dict):
            ctx.update(v)
    for f in files:
        name, _, keys = f.partition(":")
        if (root / name).is_file():
            data = load_yaml(root / name) or {}
            if keys:
                data = {k: data[k] for k in keys.split(",") if k in data}
            ctx.update(data)
    return ctx


def _norm(path: str, wdir: str) -> str:
    parts: list[str] = []
    for part in Path(wdir, path).as_posix().split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def entry_module(cmd: str, wdir: str = ".") -> tuple[str, bool] | None:
    """(module, run as a script) of what a stage runs: `python -m stages.train ...` ->
    (stages.train, False); `python stages/train.py` -> (stages.train, True);
    `torchrun ... -m stages.train` too."""
    try:
        tokens = shlex.split(cmd)
    except ValueError:
        tokens = cmd.split()
    for i, tok in enumerate(tokens):
        if tok == "-m" and i + 1 < len(tokens):
            return tokens[i + 1], False
        if tok.endswith(".py") and i > 0:
            try:
                return file_module(Path(_norm(tok, wdir))), True
            except ValueError:
                continue
    return None


def expand_stages(dvc_yaml: Mapping[str, Any], root: Path = ROOT) -> list[Stage]:
    """dvc.yaml's stages, `foreach` expanded (`train@<key>`), with deps and the entry module."""
    ctx = _context(dvc_yaml, root)
    stages = []
    for group, spec in (dvc_yaml.get("stages") or {}).items():
        if "foreach" in spec:
            items = interpolate(spec["foreach"], ctx)
            if isinstance(items, Mapping):
                variants = [(str(k), {"key": k, "item": v}) for k, v in items.items()]
            elif isinstance(items, list):
                variants = [(str(v), {"item": v}) for v in items]
            else:
                raise ValueError(f"dvc.yaml: {group}: foreach {spec['foreach']!r} is not a list or a mapping")
            bodies = [(f"{group}@{name}", {**ctx, **extra}, spec["do"]) for name, extra in variants]
        else:
            bodies = [(group, ctx, spec)]
        for name, local, body in bodies:
            wdir = str(interpolate(body.get("wdir", "."), local))
            cmds = body.get("cmd") or []
            cmds = [cmds] if isinstance(cmds, str) else list(cmds)
            cmds = [" ".join(str(interpolate(c, local)).split()) for c in cmds]
            raw = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps") or []]
            deps = [_norm(str(interpolate(d, local)), wdir) for d in raw]
            stage = Stage(name=name, group=group, cmd=cmds, deps=deps, foreach="foreach" in spec, raw_deps=raw)
            entries = [e for e in (entry_module(c, wdir) for c in cmds) if e]
            if not entries:
                stage.entry_error = f"no `python -m <module>` or `python <file>.py` in cmd {cmds!r}"
            elif module_file(entries[0][0], root) is None:
                stage.entry_error = f"entry module {entries[0][0]} is not a file of the project"
            else:
                stage.entry, stage.script = entries[0]
            stages.append(stage)
    return stages


def covered(path: Path | str, deps: Iterable[str]) -> bool:
    """Whether a dep (the file itself, or a folder holding it) covers a repo-relative file."""
    p = Path(path).as_posix()
    return any(p == d or p.startswith(d.rstrip("/") + "/") for d in deps)


def stage_report(stage: Stage, root: Path = ROOT) -> tuple[dict[Path, list[Import]], list[Path]]:
    """(closure, files of the closure no dep covers)."""
    files = closure(stage.entry, root, script=stage.script)
    return files, [p for p in files if not covered(p, stage.deps)]


def missing_deps(dvc_yaml: Mapping[str, Any], root: Path = ROOT) -> dict[str, list[str]]:
    """stage -> repo-relative code files its entry module loads that no dep covers; a `foreach`
    stage whose variants all miss the same files is reported once as `<stage>@*`. A stage whose
    entry module cannot be found reports that as its one entry."""
    per_stage: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for stage in expand_stages(dvc_yaml, root):
        groups.setdefault(stage.group, []).append(stage.name)
        if stage.entry is None:
            per_stage[stage.name] = [f"<{stage.entry_error}>"]
            continue
        _, missing = stage_report(stage, root)
        per_stage[stage.name] = [p.as_posix() for p in missing]
    out: dict[str, list[str]] = {}
    for group, names in groups.items():
        results = [per_stage[n] for n in names]
        if len(names) > 1 and all(r == results[0] for r in results):
            if results[0]:
                out[f"{group}@*"] = results[0]
        else:
            out.update({n: per_stage[n] for n in names if per_stage[n]})
    return out


# --------------------------------------------------------------------------------------------
# dvc.lock against git HEAD


def git_available(root: Path = ROOT) -> str | None:
    """None when `root` is a git checkout with a HEAD commit, else the reason it is not."""
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"git cannot run: {e}"
    if r.returncode != 0:
        return f"{root} is not a git checkout with a HEAD commit ({r.stderr.strip() or 'git rev-parse failed'})"
    return None


def head_blobs(paths: Iterable[str], root: Path = ROOT) -> dict[str, bytes]:
    """The content at git HEAD of every file at or under `paths` (repo-relative posix)."""
    paths = sorted(set(paths))
    if not paths:
        return {}
    ls = subprocess.run(["git", "ls-tree", "-r", "-z", "HEAD", "--", *paths], cwd=root,
                        capture_output=True, check=True, timeout=30).stdout
    entries = []
    for rec in ls.split(b"\0"):
        if not rec:
            continue
        meta, _, name = rec.partition(b"\t")
        _mode, kind, sha = meta.split()
        if kind == b"blob":
            entries.append((name.decode(), sha.decode()))
    if not entries:
        return {}
    out = subprocess.run(["git", "cat-file", "--batch"], cwd=root, capture_output=True, check=True,
                         input="".join(f"{sha}\n" for _, sha in entries).encode(), timeout=60).stdout
    blobs: dict[str, bytes] = {}
    pos = 0
    for name, _sha in entries:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        blobs[name] = out[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1  # content, then a newline
    return blobs


def _dvcignore(root: Path):
    """A predicate for paths .dvcignore excludes (DVC leaves them out of a folder's hash)."""
    f = root / ".dvcignore"
    if not f.is_file():
        return lambda p: False
    import pathspec  # a dependency of dvc

    spec = pathspec.PathSpec.from_lines("gitwildmatch", f.read_text(encoding="utf-8").splitlines())
    return spec.match_file


def dvc_md5(path: str, blobs: Mapping[str, bytes], ignored=lambda p: False) -> str | None:
    """The md5 DVC 3 records (`hash: md5`) for `path`, computed from `blobs`: a file's md5 of its
    bytes; a folder's `<md5 of its sorted [{md5, relpath}] JSON>.dir`, as
    dvc_data.hashfile.tree.Tree.digest does. None when nothing is there."""
    if path in blobs:
        return hashlib.md5(blobs[path]).hexdigest()
    prefix = path.rstrip("/") + "/"
    entries = sorted(
        (
            {"md5": hashlib.md5(data).hexdigest(), "relpath": name[len(prefix):]}
            for name, data in blobs.items()
            if name.startswith(prefix) and not ignored(name)
        ),
        key=lambda e: e["relpath"],
    )
    if not entries:
        return None
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def is_code_dep(path: str, md5: str | None) -> bool:
    """A .py file, or a folder under one of the code roots (src/simcse_ops/readers)."""
    if path.endswith(".py"):
        return True
    return bool(md5 and md5.endswith(".dir")) and any(
        covered(path, [base.as_posix()]) for base in CODE_ROOTS.values()
    )


def lock_code_deps(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(stage, path, md5) of every code dep recorded in dvc.lock."""
    lock = load_yaml(root / "dvc.lock") or {}
    out = []
    for stage, spec in (lock.get("stages") or {}).items():
        for dep in spec.get("deps") or []:
            path, md5 = dep.get("path", ""), dep.get("md5")
            if is_code_dep(path, md5):
                out.append((stage, path, md5))
    return out


def lock_mismatches(root: Path = ROOT) -> list[str]:
    """`stage: path: lock md5 X != HEAD md5 Y` for every code dep of dvc.lock that HEAD contradicts."""
    deps = lock_code_deps(root)
    blobs = head_blobs({p for _, p, _ in deps}, root)
    ignored = _dvcignore(root)
    out = []
    for stage, path, md5 in deps:
        head = dvc_md5(path, blobs, ignored)
        if head != md5:
            out.append(f"{stage}: {path}: lock md5 {md5} != HEAD md5 {head or '(absent at HEAD)'}")
    return out


# --------------------------------------------------------------------------------------------
# Script mode


def print_report(names: list[str], root: Path = ROOT) -> int:
    dvc_yaml = load_dvc_yaml(root)
    stages = expand_stages(dvc_yaml, root)
    missing_any = False
    seen_groups: dict[str, tuple] = {}
    for stage in stages:
        if names and stage.name not in names and stage.group not in names:
            continue
        if stage.entry is None:
            print(f"== {stage.name}: {stage.entry_error}\n")
            missing_any = True
            continue
        files, missing = stage_report(stage, root)
        code_deps = [d for d in stage.deps if any(covered(d, [b.as_posix()]) for b in CODE_ROOTS.values())]
        unused = [d for d in code_deps if not any(covered(p, [d]) for p in files)]
        key = (tuple(files), tuple(missing), tuple(unused))
        if stage.foreach and seen_groups.get(stage.group) == key:
            continue  # same as the variant printed above
        label = f"{stage.group}@* (foreach; shown for {stage.name})" if stage.foreach else stage.name
        seen_groups[stage.group] = key
        print(f"== {label}: entry {stage.entry} ({len(files)} files)")
        for p in files:
            why = files[p][0].where if files[p] else "entry"
            print(f"   {'MISSING ' if p in missing else 'ok      '}{p.as_posix():45s} <- {why}")
        if missing:
            missing_any = True
            print(f"   dvc.yaml misses {len(missing)}: " + ", ".join(p.as_posix() for p in missing))
        if unused:
            print("   code deps not imported (could be dropped): " + ", ".join(unused))
        print()
    reason = git_available(root)
    if reason:
        print(f"dvc.lock vs HEAD: skipped ({reason})")
    else:
        mism = lock_mismatches(root)
        print(f"dvc.lock vs HEAD: {len(mism)} code dep(s) differ" + (":" if mism else ""))
        for m in mism:
            print(f"   {m}")
    return 1 if missing_any else 0


if __name__ == "__main__":
    raise SystemExit(print_report(sys.argv[1:]))
