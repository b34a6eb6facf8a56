"""What the entry points share: user errors as one line, never a traceback."""
from __future__ import annotations

import contextlib
import sys

from medexp.errors import MedexpError, unwrapped_user_errors


@contextlib.contextmanager
def user_errors():
    """Print a ``MedexpError`` (also one a library wrapped) or a config value whose ``${...}`` cannot resolve as
    ``error: <message>`` and exit 2.

    Inside a multirun the error is re-raised instead, so the sweeper records a failed trial and goes on.
    """
    from medexp.hydra_setup import in_multirun, interpolation_message

    try:
        with unwrapped_user_errors():
            yield
    except Exception as exc:
        message = str(exc) if isinstance(exc, MedexpError) else interpolation_message(exc)  # a ${...} loop
        if message is None or in_multirun():
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
