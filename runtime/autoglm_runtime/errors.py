"""User-facing errors. The CLI prints them as one line and exits non-zero."""


class AutoglmError(Exception):
    """Base class: a problem with the user's input, named precisely, not a bug."""


class InputError(AutoglmError):
    """Bad user input: an unreadable image or WAV, a prompt too long for the context."""


class BundleError(AutoglmError):
    """A bundle is missing, tampered with or inconsistent with its manifest."""
