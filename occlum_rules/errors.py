"""One exception type for every mistake a user can make.

Everything the user can get wrong (a BUILD file, WORKSPACE.yaml, a BOM, Occlum.json, a
key, a corrupted cache) raises :class:`UserError`. The CLI and the doit bridge print its
message as one line and exit with status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one clear line.

    ``where`` is a location such as ``examples/hello/BUILD.py:3`` or ``Occlum.json:
    resource_limits.user_space_size``; it is put in front of the message.
    """

    def __init__(self, message: str, where: str | None = None, exit_code: int = 1):
        self.message = message
        self.where = where
        self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.where:
            return f"{self.where}: {self.message}"
        return self.message
