"""DataLoaders over HandDataset: uint8 batches, shuffled per epoch by (seed, epoch), sharded under DDP."""
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler


def default_workers():
    """Loader processes sized to the machine: all cores but one for the training process, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_loader(dataset, batch_size, train, workers=-1, seed=0, rank=0, world_size=1, pin_memory=False):
    """A loader of dicts of batched tensors. ``train``: shuffle (call ``set_epoch`` on its sampler), drop the
    last partial batch and shard across ``world_size`` processes; otherwise every sample once, in order."""
    workers = default_workers() if workers < 0 else workers
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def to_device(batch, device):
    """Move every tensor of a batch dict to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
