"""DataLoaders over the hand datasets: uint8 batches, shuffled per epoch by (seed, epoch), sharded under DDP.

A batched dataset (``batched = True``: ``data.cache.CachedHandDataset``) fetches a whole batch in
``__getitems__``; its batch dict is passed through, not collated sample by sample.
"""
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(batched=False):
    """Loader processes sized to the machine. Decoding JPEGs: all cores but one for the training process, at
    most 8. From the cache a batch is one memory copy, cheaper than handing it between processes on a small
    machine: no workers below 4 cores, else a quarter of the cores (at most 4) to hide disk reads."""
    cores = _cores()
    if batched:
        return 0 if cores < 4 else min(4, cores // 4)
    return max(1, min(8, cores - 1))


def pass_through(batch):
    """The collate of a batched dataset: its ``__getitems__`` already returns the batch dict."""
    return batch


def make_loader(dataset, batch_size, train, workers=-1, seed=0, rank=0, world_size=1, pin_memory=False):
    """A loader of dicts of batched tensors. ``train``: shuffle (call ``set_epoch`` on its sampler), drop the
    last partial batch and shard across ``world_size`` processes; otherwise every sample once, in order.
    ``workers`` -1: sized to the machine and the dataset (``default_workers``). ``pin_memory``: batches land in
    page-locked memory, so ``to_device`` copies them asynchronously."""
    batched = getattr(dataset, "batched", False)
    workers = default_workers(batched) if workers < 0 else workers
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=workers,
                      collate_fn=pass_through if batched else None, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def to_device(batch, device):
    """Move every tensor of a batch dict to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
