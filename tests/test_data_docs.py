"""simcse_ops.data_docs: GX's Data Docs templates with local copies instead of CDN URLs."""

from __future__ import annotations

import re

import pytest

from simcse_ops.data_docs import (
    STATIC_VAR,
    VENDOR_DIR,
    gx_templates_dir,
    localize_template,
    site_config,
    write_views,
)

# The network asset a page would still load: a <script src>, <link href> or <img src> URL, or a
# URL in a Jinja string (top_navbar.j2 sets its images folder so). An <a href> is only a link.
_NETWORK_ASSET = re.compile(r'<(?:script|link|img)\b[^>]*?(?:src|href)="(?:https?:)?//|\{%[^%]*"https?://')


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    return folder, write_views(folder)


def test_views_override_every_gx_template_that_loads_from_the_network(views):
    folder, names = views
    loading = sorted(p.name for p in gx_templates_dir().glob("*.j2")
                     if not p.name.startswith("markdown_") and _NETWORK_ASSET.search(p.read_text()))
    assert {"page.j2", "index_page.j2", "js_script_imports.j2", "top_navbar.j2"} <= set(loading)
    assert set(loading) <= set(names)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_generated_views_load_nothing_from_the_network(views):
    folder, names = views
    for name in names:
        text = (folder / name).read_text()
        assert not _NETWORK_ASSET.search(text), name
        assert "integrity=" not in text and "crossorigin=" not in text, name  # file:// refuses CORS


def test_pages_refer_to_static_relative_to_their_depth(views):
    folder, _ = views
    page = (folder / "page.j2").read_text()
    assert f'href="{{{{ {STATIC_VAR} }}}}{VENDOR_DIR}/bootstrap/dist/css/bootstrap.min.css"' in page
    # validations/<suite>/<run name>/<run time>/<batch>.html: suite dots + 4 levels up
    assert '(expectation_suite_name.count(".") + 4) * "../"' in page
    navbar = (folder / "top_navbar.j2").read_text()
    assert f'{{% set static_images_dir = {STATIC_VAR} ~ "images/" -%}}' in navbar
    favicon = (folder / "favicon.j2").read_text()
    assert f'{STATIC_VAR} ~ "images/favicon.ico"' in favicon


def test_an_unknown_cdn_url_stops_the_build_naming_template_and_url():
    text = '<script src="https://cdn.example.org/newlib@2/newlib.min.js"></script>'
    with pytest.raises(ValueError, match=r"page\.j2: no local copy of https://cdn\.example\.org/newlib@2"
                                         r"/newlib\.min\.js.*CDN_FILES"):
        localize_template("page.j2", text)


def test_links_to_visit_are_left_alone_and_a_changed_template_to_fix_is_reported():
    text = '<a href="https://greatexpectations.io">GX</a>'
    assert localize_template("ge_info.j2", text) is None
    with pytest.raises(ValueError, match=r"favicon\.j2: expected .*FIXES"):
        localize_template("favicon.j2", '<link rel="icon" href="{{ elsewhere }}">')


def test_site_config_sends_every_page_through_the_custom_views(tmp_path):
    cfg = site_config(tmp_path / "docs", tmp_path / "views")
    views = [cfg["site_index_builder"]["view"]] + [s["view"] for s in cfg["site_section_builders"].values()]
    assert {v["custom_views_directory"] for v in views} == {str(tmp_path / "views")}
    assert {v["module_name"] for v in views} == {"simcse_ops.gx_views"}
