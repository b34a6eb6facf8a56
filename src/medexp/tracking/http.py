"""MLflow over HTTP as medexp uses it: bounded waits for a server that stops answering, and a pre-run probe.

MLflow's client retries a failed request 7 times with exponential backoff and waits up to 120 s for each answer:
a tracking server that dies mid-run held a finished training for over 8 minutes before it failed. medexp's
processes that talk to MLflow (the writer, a sweep's parent, ``medexp-compare``, ``medexp-runs``) wait seconds
instead (``BOUNDED_HTTP``; a value set in the environment wins), and the run's results stay in its folder anyway.
MLflow's own "🏃 View run ... at: <url>" line is silenced: it prints the tracking URI with its password, and medexp
prints its own (masked) link.

Pure Python (no MLflow import): the probe runs before torch is imported.
"""
from __future__ import annotations

import http.client
import os
import ssl
import urllib.parse

BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds for each answer
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # 3 tries: at most ~35 s before a write is given up
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
NO_URL_PRINTING = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def bound_mlflow_http() -> None:
    """Set this process's MLflow HTTP limits (``BOUNDED_HTTP``, unless set already) and silence MLflow's run links."""
    for name, value in BOUNDED_HTTP.items():
        os.environ.setdefault(name, value)
    os.environ.update(NO_URL_PRINTING)


def http_unanswered(uri: str, timeout: float) -> str | None:
    """Why the server at ``uri`` gives no HTTP answer within ``timeout`` seconds, or None if it answers: any
    answer counts (a 401 of a server behind a login still answers); a server that accepts connections but never
    answers does not."""
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "https":
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", f"{parsed.path.rstrip('/')}/health")
        connection.getresponse()
        return None
    except TimeoutError:
        return f"{host}:{port} sent no HTTP answer within {timeout:.0f} s"
    except (OSError, http.client.HTTPException) as exc:
        return f"{host}:{port}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        connection.close()
