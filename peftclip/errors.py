"""The one exception type peftclip raises for problems a user can fix."""


class PeftClipError(Exception):
    """A user-facing error: says what was expected, what was found and what to do.

    The command line prints these as a single paragraph without a traceback.
    """
