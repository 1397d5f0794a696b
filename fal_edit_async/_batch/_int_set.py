"""A set of 64-bit integers in one flat array, for what a batch remembers of every item.

A batch of 100,000 items must remember each item's identity (to number repeats) and each
request id fal gave (so no job becomes two items' result). In a Python ``set`` an int costs
about 90 bytes; here it costs 16 at most (8 bytes a slot, at most half the slots full).
"""

from __future__ import annotations

from array import array

__all__ = ["IntSet"]

_MASK64 = (1 << 64) - 1


class IntSet:
    """Open addressing with linear probing over ``array('Q')``. The values are hashes and
    digests, so their low bits are spread already; 0 marks an empty slot, so it is kept
    as 1 (a clash the callers tolerate, as they tolerate any clash of 64-bit digests)."""

    __slots__ = ("_mask", "_size", "_table")

    def __init__(self) -> None:
        self._table = array("Q", bytes(8 * 1024))
        self._mask = len(self._table) - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, value: int) -> bool:
        return self._slot(value & _MASK64 or 1)[1]

    def add(self, value: int) -> bool:
        """Add ``value``; True when it was not there yet."""
        value = value & _MASK64 or 1
        index, found = self._slot(value)
        if found:
            return False
        self._table[index] = value
        self._size += 1
        if self._size * 2 > len(self._table):
            self._grow()
        return True

    def _slot(self, value: int) -> tuple[int, bool]:
        table, mask = self._table, self._mask
        index = value & mask
        while (held := table[index]) != 0:
            if held == value:
                return index, True
            index = (index + 1) & mask
        return index, False

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = len(self._table) - 1
        for value in old:
            if value:
                self._table[self._slot(value)[0]] = value
