"""Where in a user's jinja2 template an error came from.

jinja2 rewrites the tracebacks of render-time errors so that a frame points at the template
file and line; syntax errors carry the line themselves. Both Occlum.json templates and
Kubernetes manifest templates report ``file:line`` this way.
"""

from __future__ import annotations

import traceback


def template_line(exc: BaseException, template_file: str) -> int | None:
    """The line of ``template_file`` that raised ``exc``, or None when no frame is there."""
    line = getattr(exc, "lineno", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == template_file:
            line = frame.lineno
    return line
