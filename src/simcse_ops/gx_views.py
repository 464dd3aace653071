"""GX Data Docs views whose `custom_views_directory` overrides GX's own templates.

GX 1.24 accepts a `custom_views_directory` for a site's views but searches it after its packaged
templates, so a template with the name of a packaged one (page.j2, js_script_imports.j2, ...) is
never used. These views search it first. `simcse_ops.data_docs` names them in the site
configuration; GX imports this module by that name while it builds the site, which is why it
imports GX at module level and nothing of simcse_ops imports it.
"""

from __future__ import annotations

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import ChoiceLoader, FileSystemLoader


def _custom_views_first(view, custom_views_directory) -> None:
    if custom_views_directory:
        view.env.loader = ChoiceLoader([FileSystemLoader(custom_views_directory), view.env.loader])


class CustomViewsFirstPageView(DefaultJinjaPageView):
    """`DefaultJinjaPageView` (expectation suite and validation result pages), custom views first."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        _custom_views_first(self, custom_views_directory)


class CustomViewsFirstIndexPageView(DefaultJinjaIndexPageView):
    """`DefaultJinjaIndexPageView` (the site's index.html), custom views first."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        _custom_views_first(self, custom_views_directory)
