"""The one exception type for a user's mistake (a bad flag, file, corpus or checkpoint).

Its message is ONE line, ``<what is wrong>; <what is accepted>``; the command-line entry points print it as
``error: <message>`` on stderr and exit with status 2 — never a traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input; ``str(e)`` is one line saying what is wrong and what is accepted."""
