"""The pre-run check of a tracking server sends a real HTTP request: a server that accepts connections but never
answers fails it within the timeout, as a closed port does; any HTTP answer passes."""
from __future__ import annotations

import http.server
import socket
import threading
import time

from medexp.tracking.attach import unreachable
from medexp.tracking.http import BOUNDED_HTTP, bound_mlflow_http


def black_hole() -> socket.socket:
    """A listening socket on loopback that never answers (the kernel accepts connections for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_a_server_that_never_answers_fails_the_check_in_seconds():
    with black_hole() as sock:
        port = sock.getsockname()[1]
        started = time.monotonic()
        problem = unreachable(f"http://alice:pw@127.0.0.1:{port}", timeout=1)
    assert problem == f"127.0.0.1:{port} sent no HTTP answer within 1 s"
    assert time.monotonic() - started < 5


def test_a_closed_port_fails_and_any_http_answer_passes():
    with black_hole() as sock:
        port = sock.getsockname()[1]
    assert "refused" in unreachable(f"http://127.0.0.1:{port}", timeout=1)

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a server behind a path or a login still answers: that is enough
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert unreachable(f"http://127.0.0.1:{server.server_port}/prefix", timeout=5) is None
    finally:
        server.shutdown()


def test_mlflow_waits_are_bounded_unless_set_and_its_url_line_is_silenced(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    for name in [n for n in BOUNDED_HTTP if n != "MLFLOW_HTTP_REQUEST_TIMEOUT"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    bound_mlflow_http()

    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
    )

    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 3  # the user's setting wins
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2
    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True  # it prints the password of the tracking URI


def test_a_write_to_a_server_that_is_gone_is_told_from_other_failures(monkeypatch):
    from mlflow.tracking import MlflowClient

    from medexp.tracking.writer import server_gone

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with black_hole() as sock:
        port = sock.getsockname()[1]
    try:
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("medexp")
    except Exception as exc:  # noqa: BLE001 - whatever MLflow wraps it in
        gone = exc
    assert server_gone(gone)
    assert not server_gone(ValueError("a param of another value was logged before"))
