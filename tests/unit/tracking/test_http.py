"""MLflow over HTTP as medexp uses it: the pre-run probe takes any HTTP answer (a closed port or a server that never
answers fail it: tests/unit/tracking/test_attach.py), and MLflow's waits are bounded."""
from __future__ import annotations

import http.server
import threading

from medexp.tracking.http import BOUNDED_HTTP, bound_mlflow_http, http_unanswered


def test_any_http_answer_passes():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a server behind a path or a login still answers: that is enough
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert http_unanswered(f"http://127.0.0.1:{server.server_port}/prefix", timeout=5) is None
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
