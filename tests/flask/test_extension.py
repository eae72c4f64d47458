"""`asgiref_loopshare.flask.LoopShare`: the async hooks of a request share a loop."""

from __future__ import annotations

import pytest
from flask import Flask

from asgiref_loopshare.flask import CONFIG_KEY, EXTENSION_NAME, LoopShare
from asgiref_loopshare.wsgi import LoopShareMiddleware
from tests.flask.conftest import Probe
from tests.wsgi_helpers import ServerThread, on_another_thread, serve, serve_fully

HOOKS = {"before_request", "view", "after_request", "teardown_request"}


# -- request scope (the default)


def test_hooks_and_view_of_one_request_share_one_loop(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app)
    assert serve_fully(probe_app).content == b"ok"
    loops = probe.of(1)
    assert set(loops) == HOOKS
    assert len(set(loops.values())) == 1


def test_next_request_gets_a_new_loop(probe_app: Flask, probe: Probe) -> None:
    LoopShare(probe_app)
    serve_fully(probe_app)
    serve_fully(probe_app)
    assert probe.loop(2) is not probe.loop(1)


def test_request_loop_is_open_until_the_response_is_closed(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app)
    served = serve(probe_app)
    served.body()
    assert not probe.loop(1).is_closed()
    served.close()


def test_request_loop_is_closed_once_the_response_is_closed(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app)
    serve_fully(probe_app)
    assert probe.loop(1).is_closed()


def test_streamed_body_runs_on_the_request_loop(probe_app: Flask, probe: Probe) -> None:
    LoopShare(probe_app)
    assert serve_fully(probe_app, "/stream").content == b"chunk"
    assert probe.loop(1, "stream") is probe.loop(1, "before_request")


def test_async_error_handler_runs_on_the_request_loop(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app)
    assert serve_fully(probe_app, "/fail").status.startswith("404")
    assert probe.loop(1, "errorhandler") is probe.loop(1, "view")


def test_flask_test_client_request_shares_one_loop(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app)
    # buffered=True: the test client closes the response (else call .close()).
    response = probe_app.test_client().get("/", buffered=True)
    assert response.data == b"ok"
    assert len(set(probe.of(1).values())) == 1
    assert probe.loop(1).is_closed()


def test_without_loopshare_each_hook_runs_on_a_loop_of_its_own(
    probe_app: Flask, probe: Probe
) -> None:
    serve_fully(probe_app)
    assert len(set(probe.of(1).values())) == len(HOOKS)


# -- thread scope (opt-in)


def test_thread_scope_requests_on_one_thread_share_a_loop(
    probe_app: Flask, probe: Probe, server_thread: ServerThread
) -> None:
    LoopShare(probe_app, scope="thread")
    server_thread(lambda: serve_fully(probe_app))
    server_thread(lambda: serve_fully(probe_app))
    assert set(probe.of(1).values()) == set(probe.of(2).values())
    assert len(set(probe.of(2).values())) == 1


def test_thread_scope_loop_stays_open_between_requests(
    probe_app: Flask, probe: Probe, server_thread: ServerThread
) -> None:
    LoopShare(probe_app, scope="thread")
    server_thread(lambda: serve_fully(probe_app))
    assert not probe.loop(1).is_closed()


def test_thread_scope_requests_on_different_threads_get_different_loops(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app, scope="thread")
    on_another_thread(lambda: serve_fully(probe_app))
    on_another_thread(lambda: serve_fully(probe_app))
    assert probe.loop(1) is not probe.loop(2)


def test_thread_scope_loop_is_closed_when_the_server_thread_exits(
    probe_app: Flask, probe: Probe
) -> None:
    LoopShare(probe_app, scope="thread")
    on_another_thread(lambda: serve_fully(probe_app))
    assert probe.loop(1).is_closed()


# -- configuration


def test_default_scope_is_request(probe_app: Flask) -> None:
    LoopShare(probe_app)
    assert LoopShare.scope_of(probe_app) == "request"


def test_scope_is_read_from_the_app_config(probe_app: Flask) -> None:
    probe_app.config[CONFIG_KEY] = "thread"
    LoopShare(probe_app)
    assert LoopShare.scope_of(probe_app) == "thread"


def test_scope_argument_overrides_the_app_config(probe_app: Flask) -> None:
    probe_app.config[CONFIG_KEY] = "thread"
    LoopShare(probe_app, scope="request")
    assert LoopShare.scope_of(probe_app) == "request"


def test_chosen_scope_is_written_to_the_app_config(probe_app: Flask) -> None:
    LoopShare(probe_app, scope="thread")
    assert probe_app.config[CONFIG_KEY] == "thread"


def test_unknown_scope_in_the_config_is_rejected(probe_app: Flask) -> None:
    probe_app.config[CONFIG_KEY] = "process"
    with pytest.raises(ValueError, match="scope"):
        LoopShare(probe_app)


def test_init_app_later_wraps_the_app(probe_app: Flask, probe: Probe) -> None:
    loopshare = LoopShare()
    assert LoopShare.scope_of(probe_app) is None
    loopshare.init_app(probe_app)
    serve_fully(probe_app)
    assert len(set(probe.of(1).values())) == 1


def test_init_app_twice_wraps_the_app_once(probe_app: Flask) -> None:
    loopshare = LoopShare(probe_app)
    loopshare.init_app(probe_app)
    middleware = probe_app.wsgi_app
    assert isinstance(middleware, LoopShareMiddleware)
    assert not isinstance(middleware.app, LoopShareMiddleware)


def test_extension_is_registered_on_the_app(probe_app: Flask) -> None:
    loopshare = LoopShare(probe_app)
    assert probe_app.extensions[EXTENSION_NAME] is loopshare
