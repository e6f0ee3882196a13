"""Refusals shared by the command-line front ends and the daemons (one definition each).

Both carry a one-line message for the user, never a traceback; the front ends map them to
their exit codes (tvdctl, tvd-master: UsageError 2, Refused 1).
"""


class Refused(Exception):
    """The request was understood and refused: denied, invalid for the policy, or a step that
    failed (the proxy answers it as its `error`)."""


class UsageError(Exception):
    """The command line, or a file it names, cannot be used as given."""
