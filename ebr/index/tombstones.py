"""``Tombstones``: which rows of a living index are dead, one bit per row.

The bits are kept packed the way faiss' ``IDSelectorBitmap`` reads them (bit ``r % 8`` of byte
``r // 8``, little-endian), so the selector a search needs is the array itself, not a pass over
a byte per row: at 10M rows, 1.25 MB instead of a 10 MB flag array plus a 1.25 MB packing of
it after every write. A search holds the bytes it was handed while it runs, so they are never
changed once handed out: a row dies into a fresh copy of them (copy on write, one copy per
write between two searches).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["Tombstones"]


class Tombstones:
    """Dead-row bits over rows ``[0, capacity)``, growing as rows are added. Thread-safe: a
    single writer (the living index applies records under its own lock) and any number of
    readers, none of which holds the lock while it reads: what :meth:`packed`, :meth:`mask`
    and :meth:`count_in` read is never changed afterwards."""

    def __init__(self, rows: int) -> None:
        self._bits = np.zeros(_nbytes(rows), dtype=np.uint8)
        self._shared = False  # the current bytes were handed out by packed()
        self._lock = threading.Lock()
        self.count = 0  # dead rows

    @property
    def capacity(self) -> int:
        """Rows the bits cover."""
        return len(self._bits) * 8

    def __getitem__(self, row: int) -> bool:
        """Whether ``row`` is dead (rows past the capacity are not)."""
        byte = row >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (row & 7) & 1)

    def cover(self, rows: int) -> None:
        """Cover rows ``[0, rows)`` (doubling, so that growing row by row stays linear)."""
        if rows > self.capacity:
            grown = _widened(self._bits, max(2 * len(self._bits), _nbytes(rows)))
            with self._lock:
                self._bits, self._shared = grown, False

    def kill(self, row: int) -> bool:
        """Mark ``row`` dead; True if it was alive."""
        if row < 0:
            raise ValueError(f"row must be >= 0, got {row}")
        self.cover(row + 1)
        byte, bit = row >> 3, np.uint8(1 << (row & 7))
        with self._lock:
            if self._bits[byte] & bit:
                return False
            if self._shared:  # a search may be reading these bytes: change a copy
                self._bits, self._shared = self._bits.copy(), False
            self._bits[byte] |= bit
        self.count += 1
        return True

    def packed(self, rows: int) -> np.ndarray:
        """The bytes covering rows ``[0, rows)``, for a search's selector: never changed
        afterwards (a later :meth:`kill` writes a copy)."""
        n = _nbytes(rows)
        with self._lock:
            if n > len(self._bits):  # rows past the capacity: alive, in a copy of its own
                return _widened(self._bits, n)
        return self._held()[:n]

    def mask(self, rows: int) -> np.ndarray:
        """bool [rows]: a copy of the flags of rows ``[0, rows)``, unpacked outside the lock
        from bytes a write no longer changes (~10 ms at 10M rows that a write would otherwise
        wait for)."""
        bits = self._held()
        n = min(rows, len(bits) * 8)
        out = np.zeros(rows, dtype=bool)
        out[:n] = np.unpackbits(bits, count=n, bitorder="little").view(bool)
        return out

    def count_in(self, start: int, stop: int) -> int:
        """Dead rows in ``[start, stop)``: only the bytes covering them are unpacked (a
        living index's delta rows, counted for its stats, not every base row)."""
        start, stop = max(start, 0), min(stop, self.capacity)
        if stop <= start:
            return 0
        first = start >> 3
        part = np.unpackbits(self._held()[first:_nbytes(stop)], bitorder="little")
        return int(np.count_nonzero(part[start - 8 * first:stop - 8 * first]))

    def _held(self) -> np.ndarray:
        """The current bytes, handed out: a later :meth:`kill` writes a copy."""
        with self._lock:
            self._shared = True
            return self._bits


def _nbytes(rows: int) -> int:
    return (max(rows, 0) + 7) // 8


def _widened(bits: np.ndarray, nbytes: int) -> np.ndarray:
    """A copy of ``bits`` zero-padded to ``nbytes``."""
    out = np.zeros(nbytes, dtype=np.uint8)
    out[:len(bits)] = bits
    return out
