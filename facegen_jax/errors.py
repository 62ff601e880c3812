"""Errors a user can fix: every command prints them as one line instead of a traceback and exits with 2."""

import sys
from typing import Callable


class UserError(Exception):
  """A problem with the user's config, files or data; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config value is invalid."""


class DataError(UserError):
  """Input data is missing, unreadable or out of range."""


def run_command(command: str, fn: Callable[[], object]) -> int:
  """Runs `fn()`; a UserError becomes `facegen_jax[.command]: error: ...` on stderr and exit code 2, else 0."""
  try:
    fn()
  except UserError as e:
    print(f"{command}: error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0
