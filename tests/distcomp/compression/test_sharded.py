"""FSDP2's flat reduce-scatter layout as distcomp reads it: rows per shard, padding, offsets,
and views that write into the flat output."""

import torch

from distcomp.compression.sharded import layout, shard_rows, views


def test_uneven_rows_are_cut_like_torch_chunk_and_padded():
    assert [shard_rows(5, 2, i) for i in range(2)] == [3, 2]
    assert [shard_rows(5, 4, i) for i in range(4)] == [2, 2, 1, 0]
    for dim0, shards in [(5, 2), (5, 4), (8, 4), (1, 3)]:
        want = [c.shape[0] for c in torch.arange(dim0).chunk(shards)]
        want += [0] * (shards - len(want))
        assert [shard_rows(dim0, shards, i) for i in range(shards)] == want


def test_slots_follow_each_other_with_padding_and_views_write_in_place():
    params = [("w", torch.Size([5, 3])), ("b", torch.Size([5])), ("s", torch.Size([]))]
    last = layout(params, 4, 3)  # 2 rows per chunk; rank 3 holds none of w and b
    assert [(s.shape, s.offset, s.padded) for s in last] == [
        (torch.Size([0, 3]), 0, 6), (torch.Size([0]), 6, 2), (torch.Size([0]), 8, 1)]
    first = layout(params, 4, 0)
    assert [s.shape for s in first] == [torch.Size([2, 3]), torch.Size([2]), torch.Size([1])]
    flat = torch.zeros(sum(s.padded for s in first))
    for v in views(flat, first):
        v.fill_(1.0)
    assert flat.tolist() == [1.0] * 6 + [1.0] * 2 + [1.0]
