"""The one exception type for user mistakes (bad flags, missing data, corrupt files).

The stage scripts catch it at the top and print a single ``error: ...`` line with no stack
trace; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message names the file or flag and what was expected."""
