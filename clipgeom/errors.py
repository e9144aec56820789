"""One error family for everything a user can get wrong.

Messages are written for the user: what was wrong, where (file, row, array),
and what to do. Pages show them with ``st.error``; the CLI prints them and
exits non-zero. Nothing else in the package should raise bare ValueErrors at
a user.
"""


class ClipgeomError(Exception):
    """Base class: a problem the user can act on."""


class InputError(ClipgeomError):
    """Arrays, files or parameters that cannot be used as given."""


class DatasetError(ClipgeomError):
    """A dataset that is missing, corrupt, or cannot be written."""
