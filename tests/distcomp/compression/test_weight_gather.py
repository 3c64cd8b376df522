"""8-bit block codes of the weight all-gather against values worked out by hand; the all-gather
itself runs inside FSDP2 in tests/hooks/test_fsdp.py (flat test)."""

from __future__ import annotations

import pytest
import torch

from distcomp.compression.weight_gather import QuantizedAllGather, decode, encode, payload_bytes


def test_codes_and_scales_match_a_hand_computation():
    x = torch.tensor([1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 254.0, 127.0])
    payload = encode(x, block=4)
    assert payload.dtype == torch.uint8 and payload.numel() == payload_bytes(10, 4) == 10 + 12
    # block 1: scale 1/127, codes 127, -64 (round(-63.5) to even), 32, 0; block 2 all zero
    # (scale 0, codes 0); block 3: scale 2, codes 127, 64 (63.5 rounds to even)
    assert payload[:10].view(torch.int8).tolist() == [127, -64, 32, 0, 0, 0, 0, 0, 127, 64]
    assert payload[10:].clone().view(torch.float32).tolist() == pytest.approx([1 / 127, 0, 2])
    out = torch.empty(10, dtype=torch.bfloat16)
    decode(payload, 10, out, block=4)
    expected = torch.tensor([1.0, -64 / 127, 32 / 127, 0, 0, 0, 0, 0, 254.0, 128.0])
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=0)


def test_rounding_error_is_at_most_half_a_block_scale():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    out = torch.empty(1000)
    decode(encode(x), 1000, out)
    for i in range(0, 1000, 256):
        block = x[i:i + 256]
        assert (out[i:i + 256] - block).abs().max() <= block.abs().max() / 254 * (1 + 1e-6)
    with pytest.raises(ValueError, match="block"):
        QuantizedAllGather(block=0)


def test_blocks_restart_at_each_parameter():
    """A small weight beside a large bias: its own scale keeps it (one shared scale would round
    it to zero)."""
    x = torch.tensor([0.5, -0.25, 0.1, 100.0, 50.0, 0.0, 0.0, 0.0])
    payload = encode(x, block=4, splits=[3, 5])
    assert payload.numel() == payload_bytes(8, 4, [3, 5]) == 8 + 4 * 3
    assert payload[:8].view(torch.int8).tolist() == [127, -64, 25, 127, 64, 0, 0, 0]
    assert payload[8:].clone().view(torch.float32).tolist() == pytest.approx(
        [0.5 / 127, 100 / 127, 0.0])
    out = torch.empty(8)
    decode(payload, 8, out, block=4, splits=[3, 5])
    torch.testing.assert_close(out[:3], x[:3], rtol=0.02, atol=0)
    shared = torch.empty(8)
    decode(encode(x, block=4), 8, shared, block=4)
    assert shared[2] == 0  # 0.1 in a block whose maximum is 100
