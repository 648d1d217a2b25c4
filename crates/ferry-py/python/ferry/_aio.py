"""asyncio front ends: each runs the blocking call in a worker thread (the transfer itself
runs on ferry's own runtime with the GIL released), delivers progress on the event loop, and
turns a cancelled task into a cancelled transfer (the sender is told, nothing is left behind).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Optional, TypeVar

from ._ferry import CancelToken

T = TypeVar("T")


async def run(fn: Callable[..., T], *args: Any, progress: Optional[Callable[..., Any]] = None, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    token = CancelToken()
    if progress is not None:
        user = progress

        def progress(p: Any) -> None:  # type: ignore[no-redef]
            loop.call_soon_threadsafe(user, p)

    call = functools.partial(fn, *args, progress=progress, cancel=token, **kwargs)
    fut = loop.run_in_executor(None, call)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        token.cancel()
        # Let the transfer send its cancel and clean up before the cancellation propagates.
        try:
            await fut
        except BaseException:
            pass
        raise
