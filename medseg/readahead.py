"""The one read-ahead iterator: load items in background threads while the caller computes, in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Loaded", "read_ahead"]

T = TypeVar("T")
R = TypeVar("R")


class Loaded(Generic[T, R]):
    """One item and the outcome of loading it: `value` (re-raises the load's exception) and `seconds`."""

    __slots__ = ("_future", "item", "seconds")

    def __init__(self, item: T, future: Future, seconds: float) -> None:
        self.item, self._future, self.seconds = item, future, seconds

    @property
    def error(self) -> BaseException | None:
        """The exception the load raised, or None."""
        return self._future.exception()

    @property
    def value(self) -> R:
        """The loaded value; raises the load's exception when it failed."""
        return self._future.result()

    @property
    def future(self) -> Future:
        """The finished future (for callers that pass it on)."""
        return self._future


def read_ahead(items: Iterable[T], load: Callable[[T], R], *, ahead: int = 1, workers: int = 1,
               thread_name: str = "medseg-read") -> Iterator[Loaded[T, R]]:
    """Yield `Loaded(item, ...)` in input order, keeping up to `ahead` further items loading in `workers`
    threads. A load's exception stays with its item (read `.error` or `.value`); the others go on."""
    import time

    ahead, workers = max(0, int(ahead)), max(1, int(workers))

    def timed(item: T) -> tuple[R, float]:
        started = time.perf_counter()
        try:
            return load(item), time.perf_counter() - started
        except BaseException as exc:
            exc.medseg_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
            raise

    with ThreadPoolExecutor(workers, thread_name_prefix=thread_name) as pool:
        pending: deque[tuple[T, Future]] = deque()
        queue = iter(items)

        def fill() -> None:
            while len(pending) <= ahead:
                item = next(queue, _END)
                if item is _END:
                    return
                pending.append((item, pool.submit(timed, item)))

        fill()
        while pending:
            item, future = pending.popleft()
            fill()
            outcome: Future = Future()
            exc = future.exception()
            if exc is None:
                value, seconds = future.result()
                outcome.set_result(value)
            else:
                seconds = getattr(exc, "medseg_seconds", 0.0)
                outcome.set_exception(exc)
            yield Loaded(item, outcome, seconds)


_END = object()
