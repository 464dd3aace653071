"""The fast lane (`python -m pytest -m "not slow"`) leaves out every test that starts a server, a
browser or DVC end to end: tests/conftest.py marks slow every integration test (all of
tests/integration/ is) and every test using a server fixture."""

from __future__ import annotations

from tests.conftest import SERVER_FIXTURES


def test_every_integration_or_server_test_of_this_session_is_slow(request):
    """Checked on the tests this session collected: in a full run (CI) all of them; in the fast
    lane the slow ones are already deselected, so none of these may be left."""
    offenders = [
        item.nodeid for item in request.session.items
        if (item.nodeid.startswith("tests/integration/") or item.get_closest_marker("integration")
            or SERVER_FIXTURES & set(item.fixturenames))
        and not item.get_closest_marker("slow")
    ]
    assert offenders == []
