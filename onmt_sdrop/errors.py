"""The one error type users see as a plain message (no traceback) from every entry point."""


class SdropError(Exception):
    """A bad option, input file or environment, explained in one line."""
