"""IntSet behaves as a Python set of 64-bit integers, growing as it fills."""

from __future__ import annotations

from hypothesis import given, strategies as st

from fal_edit_async._batch._int_set import IntSet

_VALUES = st.integers(-(2**63), 2**64 - 1)


@given(st.lists(_VALUES, max_size=3000), st.lists(_VALUES, max_size=50))
def test_it_agrees_with_a_set(added: list[int], probes: list[int]) -> None:
    """add says whether a value is new, membership and size agree with set (0 and 1 are one
    value, and so are values equal modulo 2**64: both clashes the callers tolerate)."""

    def key(v: int) -> int:
        return v % 2**64 or 1

    ours, reference = IntSet(), set()
    for value in added:
        assert (key(value) not in reference) == ours.add(value)
        reference.add(key(value))
    assert len(reference) == len(ours)
    for value in [*added, *probes]:
        assert (key(value) in reference) == (value in ours)
