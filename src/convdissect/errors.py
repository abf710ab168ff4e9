"""The one error type for bad user input (config values, checkpoint and data files)."""


class UserInputError(ValueError):
    """Bad input from the user; the entry points print its message as one line and exit 2."""
