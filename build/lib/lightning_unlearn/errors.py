"""The project's named errors: a problem the user can fix, told in one line.

Every error a user can cause by what they pass (a setting, a path, a run folder) derives from
:class:`UnlearnError`. The command line prints such an error as one ``error: <message>`` line and
exits with status 2, without a traceback (set ``LIGHTNING_UNLEARN_DEBUG=1`` to see it); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnlearnError(Exception):
    """Base of the named errors: the message alone tells the user what is wrong and what to do."""


class SettingsError(UnlearnError, ValueError):
    """A setting (option, config value) that cannot be served as given."""
