"""Errors a user can fix: main.py prints them as one line instead of a traceback."""


class UserError(Exception):
  """A problem with the user's config, files or data; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config value is invalid."""


class DataError(UserError):
  """Input data is missing, unreadable or out of range."""
