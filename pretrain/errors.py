"""The one base class for bad input (config, data, checkpoint).

The CLI prints such an error as one line naming the file, key or shard and what to do, and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""
