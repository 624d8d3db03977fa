"""Where the work runs: the device a --device flag names and waiting for its queued work (mixed precision on it:
core.precision)."""
import torch

from core.common import UserError


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def synchronizer(device):
    """A call that waits for ``device``'s queued work (CUDA), or does nothing (CPU): read clocks after it."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
