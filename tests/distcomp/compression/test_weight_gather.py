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
