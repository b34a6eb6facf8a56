"""Credentials never leave the process: what a run records (params, tags, config.yaml, checkpoints, Hydra's copies)
goes through ``redact`` first.

Two kinds of secret are recognised: a password in a URL's user part (``http://alice:s3cret@host`` ->
``http://alice:***@host``; MLflow and SQLAlchemy URIs carry them so) and the value of a key whose name says it is one
(``password``, ``token``, ``api_key``, ``secret`` ...). Names that merely end in ``key`` (``npz_key``, ``label_key``)
are data settings, not secrets, and stay.
Pure Python: the entry points use it before torch is imported.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MASK = "***"
# scheme://user:password@  ->  scheme://user:***@   (the user name stays: it says whose access it was)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")
_SECRET_NAME = re.compile(
    r"(^|[._-])(password|passwd|pwd|passphrase|token|secret|credentials?|api[_-]?key|access[_-]?key|"
    r"secret[_-]?key|private[_-]?key|auth)($|[._-])|^key$",
    re.IGNORECASE,
)


# name=value (a Hydra override; Hydra's override_dirname joins them with commas), then name: value (YAML), whose
# name says it is a secret
_NAMED_VALUES = (re.compile(r"(?P<name>[\w.-]+)(?P<sep>=)(?P<value>'[^']*'|\"[^\"]*\"|[^\s'\",]+)"),
                 re.compile(r"(?P<name>[\w.-]+)(?P<sep>:[ \t]+)(?P<value>[^\s'\"]+)"))


def redact_text(text: str) -> str:
    """``text`` (a log line, overrides, a YAML file) with passwords in URLs and values of secret names masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    for named_value in _NAMED_VALUES:
        text = named_value.sub(lambda m: f"{m['name']}{m['sep']}{MASK}" if is_secret_name(m["name"].split(".")[-1])
                               else m[0], text)
    return text


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(str(name)))


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` (nested dicts/lists of plain values, e.g. a resolved config) with secrets masked."""
    if isinstance(value, Mapping):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, name) for item in value)
    if is_secret_name(name) and value not in (None, ""):
        return MASK
    return redact_text(value) if isinstance(value, str) else value


def redact_file(path: Path) -> None:
    """Rewrite a text file (e.g. Hydra's ``.hydra/overrides.yaml``) with its secrets masked (``redact_text``); a
    file without any is left untouched."""
    text = path.read_text()
    masked = redact_text(text)
    if masked != text:
        path.write_text(masked)
