"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class UserError(Exception):
    """A mistake in what the user gave us (config, files, data, combination of plug-ins)."""


class ConfigError(UserError):
    """An unknown key, a wrong type or value, an unreadable config file."""


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class RunDiverged(UserError):
    """The training loss or the global model became NaN or infinite: the run stopped there."""


class BackendLost(UserError):
    """The engine running the clients (a Ray cluster) is gone; the run stops at a checkpoint it can resume from."""
