"""The one exception type peftclip raises for problems a user can fix."""


class PeftClipError(Exception):
    """A user-facing error: says what was expected, what was found and what to do.

    The command line prints these as a single paragraph without a traceback.
    """


class DatasetMissing(PeftClipError):
    """A dataset's folder is absent from the data root (``data check`` reports it as missing)."""

    def __init__(self, message: str, path) -> None:
        super().__init__(message)
        self.path = path
