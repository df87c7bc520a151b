"""What every `ambidex` command module shares: progress lines, running a coroutine, and
the local stack the commands default to."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from rich.console import Console

from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack

T = TypeVar("T")
console = Console(stderr=True)


def progress(message: str) -> None:
    """One progress line on stderr (every ``ambidex`` command's style)."""
    console.print(f"[dim]>[/dim] {message}")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def local_stack() -> LocalStack:
    """The local stack as the environment configures it (``AMBIDEX_STATE_DIR``, ports)."""
    return LocalStack(StackConfig.from_env(), progress=progress)
