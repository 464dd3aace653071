"""The browser libraries the offline reports load, installed from npm into `web/node_modules`.

Reports are HTML pages a person opens from disk, often without a network: DVC plots
(`web/dvc_plots.html`, the page template `.dvc/config` names) and the Great Expectations Data Docs
(`simcse_ops.data_docs`). Their templates load vega, jQuery, bootstrap, ... from CDNs; here the
same files come from `web/node_modules`, at the exact versions `web/package-lock.json` pins
(`npm ci --prefix web` installs them).

`CDN_FILES` maps every CDN URL that GX 1.24's Data Docs templates load to its file in
node_modules; `copy_assets` copies files (with what they load in turn, e.g. Font Awesome's fonts,
and each package's licence) into a site, so the site keeps working when moved or archived.

`SIMCSE_OPS_NODE_MODULES` overrides where node_modules is (e.g. a package installed outside the
checkout); by default it is `web/node_modules` of the project this module belongs to, found from
the module's own location, then from the working directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from simcse_ops.errors import EXIT_CONFIG, UserError

NODE_MODULES_ENV = "SIMCSE_OPS_NODE_MODULES"
WEB_DIR = "web"
INSTALL_COMMAND = "npm ci --prefix web"

# CDN URL -> file under node_modules. The versions are those in the URLs, pinned in
# web/package.json; GX's index page asks for bootstrap-table 1.19.0's filter-control CSS next to
# 1.19.1's JavaScript: one version (1.19.1) serves both.
CDN_FILES: dict[str, str] = {
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        "popper.js/dist/umd/popper.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        "bootstrap/dist/js/bootstrap.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        "bootstrap/dist/css/bootstrap.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        "@fortawesome/fontawesome-free/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
}

# What a file loads in turn, relative to node_modules (Font Awesome's CSS: url(../webfonts/...)).
COMPANIONS: dict[str, tuple[str, ...]] = {
    "@fortawesome/fontawesome-free/css/all.min.css": ("@fortawesome/fontawesome-free/webfonts",),
}


class WebAssetsMissing(UserError, ValueError):
    """The npm packages are not installed (or not all of them): a setup step to run, named in the
    message. A stage run through `errors.run_main` prints it on one line and exits 2."""

    exit_status = EXIT_CONFIG


def project_root() -> Path | None:
    """The checkout this module belongs to (the first folder above it, then above the working
    directory, that holds web/package.json), or None."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / WEB_DIR / "package.json").is_file():
                return folder
    return None


def node_modules_dir() -> Path:
    """Where the npm packages are installed: $SIMCSE_OPS_NODE_MODULES, else web/node_modules of
    `project_root()`. Raises `WebAssetsMissing` naming the folder and the command that fills it."""
    override = os.environ.get(NODE_MODULES_ENV)
    if override:
        folder = Path(override).expanduser().resolve()
        where = f"${NODE_MODULES_ENV}={override}"
    else:
        root = project_root()
        if root is None:
            raise WebAssetsMissing(
                f"no {WEB_DIR}/package.json above {Path(__file__).resolve().parent} or {Path.cwd()}: "
                f"run from the simcse-ops checkout, or set {NODE_MODULES_ENV} to an installed node_modules"
            )
        folder = root / WEB_DIR / "node_modules"
        where = str(folder)
    if not folder.is_dir():
        raise WebAssetsMissing(
            f"{where}: folder not found; the reports' browser libraries are not installed. "
            f"Run `{INSTALL_COMMAND}` in {project_root() or 'the checkout'} (Node.js and npm needed)"
        )
    return folder


def asset_path(relative: str, node_modules: Path | None = None) -> Path:
    """The installed file `relative` (e.g. "jquery/dist/jquery.min.js"); `WebAssetsMissing` when
    it is not there (an outdated install: the lock file changed since `npm ci`)."""
    base = node_modules or node_modules_dir()
    path = base / relative
    if not path.exists():
        raise WebAssetsMissing(
            f"{path}: not found in the installed web assets; "
            f"run `{INSTALL_COMMAND}` again (web/package-lock.json pins the versions)"
        )
    return path


def package_of(relative: str) -> str:
    """The npm package a path under node_modules belongs to ("@scope/name" or "name")."""
    parts = relative.split("/")
    return "/".join(parts[:2]) if parts[0].startswith("@") else parts[0]


def copy_assets(dest: Path, files: Iterable[str], node_modules: Path | None = None) -> list[Path]:
    """Copy `files` (paths under node_modules), their `COMPANIONS` and each package's licence to
    `dest`, keeping the node_modules layout (`dest/jquery/dist/jquery.min.js`), so relative
    references between them keep working. Returns the copied files and folders."""
    base = node_modules or node_modules_dir()
    wanted: list[str] = []
    for rel in files:
        wanted += [rel, *COMPANIONS.get(rel, ())]
    for pkg in sorted({package_of(rel) for rel in wanted}):
        wanted += [f"{pkg}/{p.name}" for p in sorted((base / pkg).glob("LICEN[CS]E*")) if p.is_file()]
    copied = []
    for rel in dict.fromkeys(wanted):
        src, out = asset_path(rel, base), Path(dest) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, out)
        copied.append(out)
    return copied
