"""A ledger client confined to one worker thread, so request handlers and the scheduler can share it safely.

The embedded ledger holds a SQLite connection that must stay in the thread that opened it; a
Fabric client keeps a gRPC channel. Either way every call goes through one dedicated thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from consortium.identity import Identity
from consortium.ledger import Block, Ledger, LedgerEvent, TxResult, VerifyReport, open_ledger

T = TypeVar("T")


class ThreadBoundLedger:
    """The Ledger interface, with every call run on the ledger's own thread."""

    def __init__(self, url: str, identity: Identity, *, name: str, **options: Any):
        self.url = url
        self.identity = identity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ledger-{name}")
        try:
            self._ledger: Ledger = self._executor.submit(
                open_ledger, url, identity, **options
            ).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._closed = False

    def _call(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result()

    def submit(self, function: str, args: dict[str, Any]) -> TxResult:
        return self._call(lambda: self._ledger.submit(function, args))

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        return self._call(lambda: self._ledger.evaluate(function, args))

    def events(self, start_block: int = 0, limit: int | None = None) -> list[LedgerEvent]:
        return self._call(lambda: list(itertools.islice(self._ledger.events(start_block), limit)))

    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        return self._call(lambda: list(self._ledger.blocks(start, end)))

    def height(self) -> int:
        return self._call(self._ledger.height)

    def verify(self) -> VerifyReport:
        return self._call(self._ledger.verify)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._ledger.close)
        finally:
            self._executor.shutdown(wait=True)
