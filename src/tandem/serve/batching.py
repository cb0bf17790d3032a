"""Dynamic micro-batching: concurrent requests with the same key share one blocking call.

Milvus Lite pays a fixed cost per search call (it scans every row of the collection in Python to
drop overwritten and deleted rows) while each extra query vector in the call costs ~1 ms, and
the query tower embeds a batch of texts for little more than one. So requests for the same arm
collection, whatever their filters (the service groups a batch by filter: `tandem.serve.answering`),
are gathered, for at most `window_ms` after the oldest one arrived or until `max_batch` are waiting,
and answered together by `handle(key, payloads)` in a worker thread (Starlette's pool).
Requests that arrive while a batch runs form the next one, so batches grow with load.

`handle` returns one result per payload; an Exception in that list (e.g. an HTTPException 404
for an unknown item) is raised to its own request only. If `handle` itself raises for a batch
of several, each payload is retried alone, so that one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from anyio import to_thread  # the thread pool Starlette runs its sync endpoints in

Handler = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class _Waiting:
    payload: Any
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Gathers `submit(key, payload)` calls per key into batches for `handle` (see the module doc).

    window_ms = 0 disables batching: each call runs `handle(key, [payload])` in a thread at once.
    One batch per key runs at a time; different keys (kinds, arms) run concurrently. A key's
    worker task exits when its queue is empty, so keys that stop coming leave nothing behind.
    """

    def __init__(self, handle: Handler, window_ms: float = 5.0, max_batch: int = 64):
        if window_ms < 0 or max_batch < 1:
            raise ValueError(f"window_ms must be >= 0 and max_batch >= 1, got {window_ms} and {max_batch}")
        self.handle, self.window, self.max_batch = handle, window_ms / 1000, max_batch
        self._queues: dict[Hashable, list[_Waiting]] = {}
        self._full: dict[Hashable, asyncio.Event] = {}
        self._workers: dict[Hashable, asyncio.Task] = {}
        self.calls = 0  # handle() calls made (observability and tests)
        self.sizes: list[int] = []  # their sizes, most recent last (the last 1000)
        self._count = threading.Lock()

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """The result of `payload` (or its exception), once its batch has been handled."""
        if self.window == 0:
            return _unwrap((await to_thread.run_sync(self._run, key, [payload]))[0])
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(key, [])
        queue.append(_Waiting(payload, future, time.monotonic()))
        if key not in self._workers:
            self._full[key] = asyncio.Event()
            self._workers[key] = asyncio.create_task(self._work(key))
        if len(queue) >= self.max_batch:
            self._full[key].set()
        return await future

    async def _work(self, key: Hashable) -> None:
        queue, full = self._queues[key], self._full[key]
        try:
            while queue:
                # wait for the rest of the window of the oldest waiting request (over already for
                # requests that queued up while the previous batch ran) or a full batch
                left = queue[0].arrived + self.window - time.monotonic()
                if left > 0 and len(queue) < self.max_batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(full.wait(), left)
                full.clear()
                batch = queue[: self.max_batch]
                del queue[: self.max_batch]
                live = [w for w in batch if not w.future.done()]  # a cancelled request (client gone) is skipped
                if not live:
                    continue
                try:
                    results = await to_thread.run_sync(self._run, key, [w.payload for w in live])
                except Exception as e:  # a broken handler: every request of the batch gets the error
                    results = [e] * len(live)
                except asyncio.CancelledError:
                    queue[:0] = live  # answered below
                    raise
                for w, result in zip(live, results, strict=True):
                    if w.future.done():
                        continue
                    if isinstance(result, BaseException):
                        w.future.set_exception(result)
                    else:
                        w.future.set_result(result)
        finally:
            del self._workers[key], self._queues[key], self._full[key]
            for w in queue:  # only left when the worker was cancelled (shutdown): answer, do not leave them waiting
                if not w.future.done():
                    w.future.set_exception(RuntimeError("the service is shutting down"))

    def _run(self, key: Hashable, payloads: list) -> list:
        """handle() on the batch (in a worker thread); a whole-batch error is retried one by one."""
        with self._count:
            self.calls += 1
            self.sizes = [*self.sizes[-999:], len(payloads)]
        try:
            results = list(self.handle(key, payloads))
        except Exception as e:
            if len(payloads) == 1:
                return [e]
            return [self._run(key, [p])[0] for p in payloads]
        if len(results) != len(payloads):
            raise RuntimeError(f"batch handler returned {len(results)} results for {len(payloads)} payloads")
        return results


def _unwrap(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result
