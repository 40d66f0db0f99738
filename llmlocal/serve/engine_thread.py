"""A thread that drives an :class:`~llmlocal.engine.Engine` for callers on other threads.

The engine has no threads and no locks: one owner calls ``step()``. A server has many callers
(one per HTTP request) on its event loop, so this worker is the owner: callers hand it tickets
through a thread-safe inbox, it admits them between steps, and each step's events go back through
the ticket's ``deliver`` callback (which must not block: the server's posts to its event loop).
While the engine is busy the worker never waits for new work, so a request that arrives mid-job
joins the running batch at the next step (continuous batching), instead of queueing behind a lock.
``llama_decode`` releases the GIL, so the event loop serves I/O while a step computes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from ..engine import Engine, Event, Failed, Finished, Handle, Request
from ..errors import ContextOverflowError, InvalidSchemaError, UsageError
from ..runtime import Model

Deliver = Callable[[Event], None]


class Ticket:
    """One request handed to a :class:`GenerationWorker`; ``deliver`` receives its events.

    A request the engine refuses, or that fails, gets one ``Failed`` event whose ``handle`` may
    be None (it never reached the engine). A cancelled ticket gets no further events.
    """

    def __init__(self, request: Request, deliver: Deliver) -> None:
        self.request = request
        self.deliver = deliver
        self.handle: Handle | None = None
        self.cancelled = False


class GenerationWorker:
    """Owns ``model`` and an Engine of ``n_parallel`` slots on a daemon thread until :meth:`close`."""

    def __init__(self, model: Model, n_parallel: int, *, name: str = "model") -> None:
        self.engine = Engine(model, n_parallel)
        self._inbox: queue.SimpleQueue[tuple[str, Ticket | None]] = queue.SimpleQueue()
        self._tickets: dict[int, Ticket] = {}  # by handle number
        self._outstanding = 0  # tickets submitted and not yet ended; read from other threads
        self._count_lock = threading.Lock()
        self.cancelled = 0  # requests whose client went away (for /health and tests)
        self._thread = threading.Thread(target=self._run, name=f"llmlocal-engine-{name}", daemon=True)
        self._thread.start()

    # -- any thread

    @property
    def n_ctx_seq(self) -> int:
        """Tokens one request may hold (prompt + generated)."""
        return self.engine.n_ctx_seq

    @property
    def outstanding(self) -> int:
        """Requests submitted and not finished, failed or cancelled (queued ones included)."""
        return self._outstanding

    def submit(self, ticket: Ticket) -> None:
        with self._count_lock:
            self._outstanding += 1
        self._inbox.put(("submit", ticket))

    def cancel(self, ticket: Ticket) -> None:
        """Stop ``ticket`` (its client went away): its slot is freed before the next step.

        Call it after :meth:`submit` of the same ticket (the inbox keeps their order).
        """
        self._inbox.put(("cancel", ticket))

    def close(self) -> None:
        """Cancel everything, stop the thread and wait for it (the model stays open: the caller's)."""
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join()

    # -- the worker thread

    def _ended(self, ticket: Ticket) -> None:
        if ticket.handle is not None:
            self._tickets.pop(ticket.handle.number, None)
        with self._count_lock:
            self._outstanding -= 1

    def _send(self, ticket: Ticket, event: Event) -> None:
        try:
            ticket.deliver(event)
        except RuntimeError:  # the receiving event loop is closed (server shutting down)
            pass

    def _take(self, kind: str, ticket: Ticket | None) -> bool:
        """Apply one inbox message; False on stop."""
        if kind == "stop":
            return False
        assert ticket is not None
        if kind == "submit":
            try:
                ticket.handle = self.engine.submit(ticket.request)
            except (UsageError, ContextOverflowError, InvalidSchemaError) as exc:
                self._ended(ticket)
                self._send(ticket, Failed(None, exc))  # type: ignore[arg-type]
                return True
            self._tickets[ticket.handle.number] = ticket
        elif kind == "cancel" and not ticket.cancelled:
            ticket.cancelled = True
            if ticket.handle is not None and not ticket.handle.done:
                self.engine.cancel(ticket.handle)
                self.cancelled += 1
                self._ended(ticket)
        return True

    def _run(self) -> None:
        engine = self.engine
        running = True
        while running:
            # Block for work only when there is nothing to step; otherwise take what has arrived.
            try:
                kind, ticket = self._inbox.get(block=engine.idle)
                running = self._take(kind, ticket)
                while running:
                    kind, ticket = self._inbox.get_nowait()
                    running = self._take(kind, ticket)
            except queue.Empty:
                pass
            if not running:
                break
            try:
                events = engine.step()
            except BaseException as exc:  # a bug or an interrupt: fail what is running, keep serving
                events = [Failed(t.handle, exc) for t in list(self._tickets.values()) if t.handle is not None]
                engine.close()
            for event in events:
                ticket = self._tickets.get(event.handle.number)
                if ticket is None or ticket.cancelled:
                    continue
                if isinstance(event, (Finished, Failed)):
                    self._ended(ticket)
                self._send(ticket, event)
        for ticket in list(self._tickets.values()):
            self._ended(ticket)
            if ticket.handle is not None:  # every ticket in _tickets was submitted
                self._send(ticket, Failed(ticket.handle, RuntimeError("the server is shutting down")))
        engine.close()
