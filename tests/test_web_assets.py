"""simcse_ops.web_assets: the npm-installed browser libraries of the offline reports, and the DVC
plots page template that loads them (.dvc/config [plots] html_template)."""

from __future__ import annotations

import configparser
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simcse_ops import web_assets
from simcse_ops.data_docs import GX_STATIC, gx_templates_dir
from simcse_ops.web_assets import (
    CDN_FILES,
    NODE_MODULES_ENV,
    WebAssetsMissing,
    copy_assets,
    node_modules_dir,
    package_of,
)

ROOT = Path(__file__).resolve().parents[1]

# A script, stylesheet or image a GX template loads from the network (an <a href> is a link to
# visit, not an asset), or a Jinja string holding such a URL (top_navbar.j2's images folder).
_ASSET_URL = re.compile(r'<(?:script|link|img)\b[^>]*?(?:src|href)="(https?://[^"]+)"')
_JINJA_URL = re.compile(r'\{%[^%]*"(https?://[^"]+)"[^%]*%\}')


def gx_asset_urls() -> set[str]:
    urls = set()
    for path in gx_templates_dir().glob("*.j2"):
        text = path.read_text(encoding="utf-8")
        urls |= set(_ASSET_URL.findall(text)) | set(_JINJA_URL.findall(text))
    return urls


@pytest.fixture(scope="module")
def installed() -> Path:
    try:
        return node_modules_dir()
    except WebAssetsMissing as e:
        pytest.fail(str(e))


def test_every_cdn_url_of_the_installed_gx_templates_has_a_local_file():
    urls = gx_asset_urls()
    assert len(urls) >= 15, urls  # the scan itself finds GX's CDN tags
    missing = sorted(urls - set(CDN_FILES) - set(GX_STATIC))
    assert not missing, f"GX templates load {missing}: add them to web_assets.CDN_FILES"


def test_every_mapped_file_is_installed(installed):
    absent = [rel for rel in CDN_FILES.values() if not (installed / rel).is_file()]
    assert not absent, f"not in {installed}: {absent}"


def test_package_json_pins_exact_versions_that_the_lock_installs():
    pkg = json.loads((ROOT / "web" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    deps = pkg["dependencies"]
    assert {"vega", "vega-lite", "vega-embed", "jquery", "bootstrap", "bootstrap-table"} <= set(deps)
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version!r} is not an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    # DVC's plot specs are vega-lite v5; GX's templates name vega 5, vega-lite 5, vega-embed 6.
    assert [deps[n].split(".")[0] for n in ("vega", "vega-lite", "vega-embed")] == ["5", "5", "6"]


def test_each_versioned_cdn_url_gets_the_pinned_version():
    deps = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]
    for url, rel in CDN_FILES.items():
        pinned = deps[package_of(rel)]
        m = re.search(r"(\d+\.\d+\.\d+)", url)
        if m and package_of(rel) != "bootstrap-table":  # GX mixes 1.19.0 and 1.19.1: 1.19.1 serves both
            assert m.group(1) == pinned, f"{url} -> {rel}: npm has {pinned}"


def test_missing_node_modules_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere" / "node_modules"
    monkeypatch.setenv(NODE_MODULES_ENV, str(absent))
    with pytest.raises(WebAssetsMissing) as err:
        node_modules_dir()
    assert str(absent) in str(err.value) and "npm ci --prefix web" in str(err.value)
    assert err.value.exit_status == 2


def test_default_node_modules_is_the_checkouts_web_folder(monkeypatch):
    monkeypatch.delenv(NODE_MODULES_ENV, raising=False)
    assert web_assets.project_root() == ROOT
    assert node_modules_dir() == ROOT / "web" / "node_modules"


def test_a_missing_file_in_an_install_says_to_reinstall(tmp_path):
    (tmp_path / "jquery").mkdir()
    with pytest.raises(WebAssetsMissing, match=r"jquery\.min\.js: not found.*npm ci --prefix web"):
        copy_assets(tmp_path / "out", ["jquery/dist/jquery.min.js"], node_modules=tmp_path)


def test_copy_keeps_the_layout_with_companions_and_licences(installed, tmp_path):
    css = "@fortawesome/fontawesome-free/css/all.min.css"
    copy_assets(tmp_path, [css, "jquery/dist/jquery.min.js"], node_modules=installed)
    assert (tmp_path / css).read_bytes() == (installed / css).read_bytes()
    fonts = tmp_path / "@fortawesome/fontawesome-free/webfonts"
    assert sorted(p.name for p in fonts.iterdir()) == sorted(
        p.name for p in (installed / "@fortawesome/fontawesome-free/webfonts").iterdir())
    assert re.search(r"url\(\.\./webfonts/", (tmp_path / css).read_text())  # what the fonts are for
    assert (tmp_path / "jquery" / "LICENSE.txt").is_file()
    assert package_of(css) == "@fortawesome/fontawesome-free" and package_of("jquery/x.js") == "jquery"


# --------------------------------------------------------------------------------------------
# DVC plots page


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        if tag == "link" and a.get("href"):
            self.links.append(a["href"])


def dvc_plots_template() -> Path:
    config = configparser.ConfigParser(comment_prefixes=("#",), inline_comment_prefixes=("#",))
    config.read(ROOT / ".dvc" / "config")
    assert config.has_option("plots", "html_template"), ".dvc/config has no [plots] html_template"
    # DVC resolves a relative template path against the .dvc folder (dvc/commands/plots.py).
    return (ROOT / ".dvc" / config.get("plots", "html_template")).resolve()


def test_dvc_plots_template_loads_vega_from_node_modules(installed):
    template = dvc_plots_template()
    assert template.is_file(), f"{template}: the template .dvc/config names is missing"
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text
    assert "{scripts}" not in text  # DVC's own script tags load vega from a CDN
    tags = _Tags()
    tags.feed(text)
    assert len(tags.scripts) == 3 and not tags.links
    page_dir = ROOT / "dvc_plots"  # `dvc plots show` writes dvc_plots/index.html at the root
    for src in tags.scripts:
        assert not src.startswith(("http:", "https:", "//")), src
        path = (page_dir / src).resolve()
        assert path.is_file(), f"{template}: {src} -> {path} does not exist (npm ci --prefix web)"
        assert path.is_relative_to(installed)
    assert [Path(s).parts[3] for s in tags.scripts] == ["vega", "vega-lite", "vega-embed"]
    assert 'renderer: "svg"' in text  # vega-embed draws SVG marks a browser test can count


def test_dvc_plots_template_fills_like_dvc_does():
    from dvc_render.html import HTML

    page = HTML(dvc_plots_template().read_text(encoding="utf-8"))
    page.with_scripts('<script src="https://cdn.example/vega@5"></script>')
    page.with_element('<div id="p1"></div>')
    html = page.embed()
    assert '<div id="p1"></div>' in html and "cdn.example" not in html and "{" + "plot_divs}" not in html
