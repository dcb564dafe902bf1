"""Ctrl-C deferred to the end of a step that must not be cut in half (a bond update, a checkpoint)."""

from __future__ import annotations


class DeferredInterrupt:
    """Defer Ctrl-C (SIGINT) to a point where the state is consistent.

    Inside the ``with`` block a SIGINT only sets a flag; :meth:`check` then
    raises ``KeyboardInterrupt``.  The sweeps call it after every bond update,
    so the network, its environments and the label position are consistent
    when the interrupt propagates (the model can be saved); ``tnlearn train``
    calls it after writing a checkpoint's files, so a run directory never holds
    a model without its history.  Outside the main thread, where
    signal handlers cannot be installed, Ctrl-C behaves as usual.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def check(self):
        if self.requested:
            raise KeyboardInterrupt("interrupted at a consistent point")

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
