"""The exceptions the library raises. Each carries one sentence fit for a user's terminal.

Only entry points (the CLI and the KFP components) catch them, print the sentence and exit
non-zero; the library never prints or exits.
"""


class ScenesearchError(Exception):
    """Base class: a failure that a user can act on, described in one sentence."""


class ConfigError(ScenesearchError):
    """A configuration field has a wrong type or value; the message names the field."""


class DataError(ScenesearchError):
    """The dataset as a whole is unusable (missing root, nothing usable left, bad layout)."""


class ItemError(ScenesearchError):
    """One scene or image is unusable; callers record it in the rejects table and skip it."""


class RenderError(ScenesearchError):
    """The rasteriser could not be started or could not draw a scene."""


class TrackingError(ScenesearchError):
    """The MLflow tracking store or server cannot be reached or refused a call; the message names it."""
