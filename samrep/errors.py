"""The one error type samrep raises for bad input; the CLI prints it as one line and exits 2."""


class SamrepError(Exception):
    """A user-facing error: the message names the file, key or path and what is wrong."""
