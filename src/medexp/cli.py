"""What the entry points share: user errors as one line, never a traceback."""
from __future__ import annotations

import contextlib
import sys

from medexp.errors import MedexpError


@contextlib.contextmanager
def user_errors():
    """Print a ``MedexpError`` as ``error: <message>`` and exit 2.

    Inside a multirun the error is re-raised instead, so the sweeper records a failed trial and goes on.
    """
    try:
        yield
    except MedexpError as exc:
        from medexp.pipeline import in_multirun

        if in_multirun():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
