"""The CLI's consoles and its one way of reporting our own errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from shared.errors import VoxfleetError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one error, one line, even in a pipe
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Our own errors become one red line and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VoxfleetError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
