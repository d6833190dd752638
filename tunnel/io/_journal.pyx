# cython: language_level=3
"""The pumps' journal (Cython twin of ``tunnel/io/journal_ref.py``: same API and behaviour).

Declared in ``tunnel/io/_journal.pxd`` so the native pumps ``cimport`` it and call
:meth:`Journal.add`/:meth:`Journal.open` from C (cpdef: a C call, no Python frame). Read the
reference's docstring for the contract.
"""

from tunnel.io.journal_ref import JOURNAL_DELAY, JOURNAL_LIMIT, RECEIVED, SENT

__all__ = ["JOURNAL_DELAY", "JOURNAL_LIMIT", "RECEIVED", "SENT", "Journal"]

cdef Py_ssize_t _LIMIT = JOURNAL_LIMIT


cdef class Journal:
    """Records of settled batches; see tunnel/io/journal_ref.py."""

    def __init__(self, double delay, flush):
        self.loop = None
        self.delay = delay
        self.flush = flush
        self.records = []
        self.armed = False

    cpdef add(self, tuple record):
        """Append ``record``; the first record since the last timer arms one (``delay``)."""
        self.records.append(record)
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.delay, self._due)

    def _due(self):
        self.armed = False
        self.flush()

    def take(self):
        """The records so far, oldest first (the journal is empty after)."""
        cdef list records = self.records
        self.records = []
        return records

    cpdef bint open(self):
        """Whether a settled batch may be journaled now (a loop is set and there is room)."""
        return self.loop is not None and len(self.records) < _LIMIT
