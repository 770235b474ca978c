"""The one error type a user can cause. Its message names the input and the fix."""


class RagtuneError(Exception):
    """A problem with the user's input or environment, printed without a traceback by the CLI."""
