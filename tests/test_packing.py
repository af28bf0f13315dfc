"""Index packing round-trips for every width and is bit-exact as documented."""

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire.packing import PackingError, pack, packed_size, unpack


@st.composite
def index_arrays(draw):
    bits = draw(st.integers(1, 16))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    return bits, values


@settings(max_examples=examples(2000), deadline=None)
@given(index_arrays())
def test_round_trip_every_width(case):
    bits, values = case
    data = pack(values, bits)
    assert len(data) == packed_size(len(values), bits)
    assert unpack(data, len(values), bits).tolist() == values


@pytest.mark.parametrize("bits", range(1, 17))
def test_each_width_explicitly(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, size=577)
    assert (unpack(pack(values, bits), 577, bits) == values).all()


def test_documented_bit_order():
    # 12-bit 0xABC then 0x123: LSB first into a little-endian bit stream.
    assert pack([0xABC, 0x123], 12) == bytes([0xBC, 0x3A, 0x12])
    assert pack([1, 0, 1], 1) == bytes([0b101])
    assert pack([5], 3) == bytes([0b101])


@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=64), st.integers(0, 50), st.integers(1, 16), st.integers(1, 1 << 16))
def test_unpack_accepts_or_refuses_cleanly(data, count, bits, k):
    try:
        idx = unpack(data, count, bits, k)
    except PackingError:
        return
    assert len(data) == packed_size(count, bits)
    assert idx.shape == (count,) and (idx < k).all()
    assert pack(idx, bits) == data


def test_refusals_name_the_problem():
    with pytest.raises(PackingError, match="pack into 3 bytes, got 4"):
        unpack(b"\0" * 4, 2, 12)
    with pytest.raises(PackingError, match="padding"):
        unpack(bytes([0xFF, 0xFF]), 1, 12)
    with pytest.raises(PackingError, match="out of range for a codebook of 100"):
        unpack(pack([3, 200], 8), 2, 8, k=100)
    with pytest.raises(PackingError, match="1..16"):
        pack([0], 17)
    with pytest.raises(PackingError, match="indices must be in 0..7"):
        pack([8], 3)
