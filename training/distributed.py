"""The processes of a run under torchrun (DDP): joining the group, waiting for each other, comparing weights. With
one process (plain python) every helper is a no-op."""
import os

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from core.device import resolve_device


def init_distributed(device_name):
    """(rank, world_size, device). Under torchrun: nccl on GPUs, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    # torchrun's agent keeps one store across the restarts of a group (--max-restarts); the keys of each attempt
    # get their own prefix, or a restarted group would read the dead attempt's addresses and never connect
    store, rank, world_size = next(rendezvous("env://"))
    store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world_size)
    return rank, world_size, device


def barrier(world_size):
    if world_size > 1:
        dist.barrier()


def broadcast_int(value, device, world_size):
    """Rank 0's ``value`` on every rank (``value`` itself with one process)."""
    if world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def ranks_hold_same_weights(model):
    """True when every rank's parameters equal rank 0's, compared against a broadcast copy of rank 0's."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([float(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())
