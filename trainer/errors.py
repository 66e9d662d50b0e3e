"""The error every module raises for bad user input; imports nothing from trainer.

It lives on the ground floor so that config, hardware, sharding and the rest can all
raise it without importing each other. ``trainer.config`` re-exports it, and callers
keep writing ``from trainer.config import ConfigError``.
"""


class ConfigError(ValueError):
  """Bad configuration or command-line input; the CLI prints it and exits 2."""
