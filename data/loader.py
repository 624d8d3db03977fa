"""DataLoaders over the hand datasets: uint8 batches, shuffled per epoch by (seed, epoch), sharded under DDP, and
able to start an epoch part-way (a run resumed mid-epoch).

A batched dataset (``batched = True``: ``data.dataset.CachedHandDataset``) fetches a whole batch in
``__getitems__``; its batch dict is passed through, not collated sample by sample.
"""
import itertools

import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from core.common import ignore_stop_signals, usable_cores


def default_workers(batched=False):
    """Loader processes sized to the machine. Decoding JPEGs: all cores but one for the training process, at
    most 8. From the cache a batch is one memory copy, cheaper than handing it between processes on a small
    machine: no workers below 4 cores, else a quarter of the cores (at most 4) to hide disk reads."""
    cores = usable_cores()
    if batched:
        return 0 if cores < 4 else min(4, cores // 4)
    return max(1, min(8, cores - 1))


def pass_through(batch):
    """The collate of a batched dataset: its ``__getitems__`` already returns the batch dict."""
    return batch


class EpochSampler(DistributedSampler):
    """DistributedSampler (this process's shard of the (seed, epoch) shuffle) that can start an epoch part-way:
    ``set_epoch(epoch, skip=n)`` leaves out the first n indices of the epoch's order, so a resumed run gets the
    batches it had not trained on without loading the others."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return self.num_samples - self.skip


def make_loader(dataset, batch_size, train, workers=-1, seed=0, rank=0, world_size=1, pin_memory=False,
                shielded=False):
    """A loader of dicts of batched tensors. ``train``: shuffle (call ``set_epoch`` on its ``EpochSampler``),
    drop the last partial batch and shard across ``world_size`` processes; otherwise every sample once, in order.
    ``workers`` -1: sized to the machine and the dataset (``default_workers``). ``pin_memory``: batches land in
    page-locked memory, so ``to_device`` copies them asynchronously. ``shielded``: the workers ignore SIGINT and
    SIGTERM (a terminal's Ctrl-C and a scheduler's SIGTERM reach every process), so that the training process can
    finish its step with them; it must then end them with ``shut_down`` before it exits."""
    batched = getattr(dataset, "batched", False)
    workers = default_workers(batched) if workers < 0 else workers
    if train:
        sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=workers,
                      collate_fn=pass_through if batched else None, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=_shield if shielded and workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))  # not the global stream: resumes stay exact


def _shield(worker_id):
    ignore_stop_signals()


def shut_down(loader):
    """End the worker processes of ``loader`` now (persistent workers otherwise live until the interpreter exits,
    and shielded ones would not end then)."""
    iterator = getattr(loader, "_iterator", None)  # torch keeps the persistent workers' iterator here
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def to_device(batch, device):
    """Move every tensor of a batch dict to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
