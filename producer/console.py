"""The CLI's consoles and its one way of reporting our own errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from shared.errors import VoxfleetError
from shared.settings import get_settings, redacted

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one error, one line, even in a pipe
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Our own errors become one red line and exit code 2, not a traceback; so does a broker
    that cannot be reached or refuses our credentials (its URL shown without the password)."""
    import redis
    from kombu.exceptions import OperationalError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VoxfleetError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except (redis.RedisError, OperationalError) as exc:
            url = redacted(get_settings().broker_url.get_secret_value())
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            err_console.print(
                f"[red]error:[/red] broker {url}: {type(exc).__name__}: {reason}", highlight=False
            )
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]
