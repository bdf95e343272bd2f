"""The signer's error type: one clear line for the API, sgx_sign's own lines for the drop-in."""

from __future__ import annotations

from occlum_rules.errors import UserError


class SignError(UserError):
    """A user mistake found while signing.

    ``tool_lines`` are the stderr lines the real sgx_sign prints for the same mistake, so
    the drop-in CLI can print exactly those; ``str()`` joins them into one line.
    """

    def __init__(self, *tool_lines: str, where: str | None = None, exit_code: int = 1):
        self.tool_lines = [line for line in tool_lines if line]
        self.printed = ""  # the XML sgx_sign echoed before failing
        self.log_before: list[str] = []  # what sgx_sign printed before failing
        super().__init__(" ".join(self.tool_lines), where, exit_code)


FORMAT_ERROR = "Configuration file format is not correct."
