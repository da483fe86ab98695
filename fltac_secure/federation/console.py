"""One line per meaningful event, for both roles: time, site, what happened.

Printed with rich (colour on a terminal, plain text in a pipe or a log file),
and nothing else: the roles' state lives in their workspaces, not in logs.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape


class EventLog:
    """Prints ``HH:MM:SS site  message`` lines; ``warn`` in yellow, ``error`` in red."""

    def __init__(self, site: str, console: Console | None = None, *, quiet: bool = False) -> None:
        self.site = site
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet

    def _line(self, text: str, style: str | None) -> None:
        if self.quiet:
            return
        stamp = time.strftime("%H:%M:%S")
        body = escape(text) if style is None else f"[{style}]{escape(text)}[/{style}]"
        self.console.print(f"[dim]{stamp}[/dim] [bold]{escape(self.site)}[/bold]  {body}")

    def info(self, text: str) -> None:
        self._line(text, None)

    def good(self, text: str) -> None:
        self._line(text, "green")

    def warn(self, text: str) -> None:
        self._line(text, "yellow")

    def error(self, text: str) -> None:
        self._line(text, "red")
