"""Reading tasks run in one thread pool, their errors handed back in order: the caller
raises the first in its own order (the file it names does not depend on the threads)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


def run_tasks(tasks: Sequence[Callable[[], Any]], workers: int) -> list[Any]:
    """Run every task, all queued at once in their order, in ``workers`` threads (one: in
    this thread); each one's result, or the Exception it raised (:func:`raised`), in order."""

    def outcome(task: Callable[[], Any]) -> Any:
        try:
            return task()
        except Exception as err:  # handed back in order: the caller raises the first
            return _Raised(err)

    if workers <= 1:
        return [outcome(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2starmap-read") as pool:
        return list(pool.map(outcome, tasks))


@dataclass(frozen=True)
class _Raised:
    error: Exception


def raised(outcome: Any) -> Any:
    """A :func:`run_tasks` outcome: the task's result, or its Exception raised."""
    if isinstance(outcome, _Raised):
        raise outcome.error
    return outcome
