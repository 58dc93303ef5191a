"""The base of every error a user can act on.

Each console command prints such an error as one line naming the input and what to do, and
exits with the error's ``exit_code`` (2 for bad arguments and configs, as argparse does; 1 for
everything else); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class ApvHubError(Exception):
    """An error caused by the input (arguments, files, data, a diverging run), not a bug."""

    exit_code = 1
