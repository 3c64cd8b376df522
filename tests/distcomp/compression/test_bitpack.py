import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distcomp.compression.bitpack import pack_bits, packed_nbytes, unpack_bits

BITS = [1, 2, 3, 4, 5, 6, 7, 8, 16, 32]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_roundtrip_and_exact_size(bits, n, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=gen, dtype=torch.int64)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", BITS)
def test_layout_is_little_endian_bit_stream(bits):
    # code i occupies bits [i*b, (i+1)*b) of the stream; check against a pure-Python reference
    codes = [(7 * i + 3) % (2**bits) for i in range(13)]
    stream = 0
    for i, c in enumerate(codes):
        stream |= c << (i * bits)
    expected = [(stream >> (8 * j)) & 0xFF for j in range(packed_nbytes(13, bits))]
    assert pack_bits(torch.tensor(codes), bits).tolist() == expected


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)
    with pytest.raises(TypeError):
        unpack_bits(torch.zeros(4, dtype=torch.int32), 4, 3)
