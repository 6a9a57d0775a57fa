"""Error types raised by the CLIPNodule library.

Every error message names the offending value and how to fix it. The command
line prints the message as one line; the Slicer module shows it in the panel.
"""


class CLIPNoduleError(Exception):
    """Base class of every error that the library raises on purpose."""


class InputError(CLIPNoduleError, ValueError):
    """An input image, point, table or option is invalid."""


class BundleError(CLIPNoduleError):
    """A model bundle is missing, incomplete, tampered with or inconsistent."""
