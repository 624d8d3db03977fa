"""Mixed precision, chosen once per device for training, prediction and bench.py.

bf16 autocast only on GPUs with native bf16 (compute capability 8.0 and up: A100, H100, RTX 30xx and later);
``torch.cuda.is_bf16_supported()`` also answers yes where bf16 is emulated, which is slow. Older GPUs (T4 7.5,
V100 7.0, P100 6.0) get fp16 autocast with a loss scaler (fp16's narrow range underflows small gradients). The
CPU, and any device with AMP off, runs fp32."""
import contextlib
from dataclasses import dataclass

import torch

NATIVE_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    name: str                     # 'bf16', 'fp16' or 'fp32'
    reason: str = ""              # why, in a few words, for the start-up line

    @property
    def dtype(self):
        """The autocast dtype; None: no autocast."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def scaled(self):
        """fp16 gradients need a loss scaler."""
        return self.name == "fp16"

    def describe(self):
        """'bf16 autocast, native on compute capability 9.0', for the line naming the device."""
        what = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with a loss scaler", "fp32": "fp32"}[self.name]
        return f"{what}, {self.reason}" if self.reason else what

    def autocast(self):
        """The context the forward pass runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler, enabled only for fp16."""
        return torch.amp.GradScaler("cuda", enabled=self.scaled)


def choose(device, amp):
    """The Precision for ``device`` (torch.device or name) with mixed precision asked for (``amp``) or not."""
    device = torch.device(device)
    if device.type != "cuda":
        return Precision("fp32")
    if not amp:
        return Precision("fp32", "mixed precision off")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= NATIVE_BF16_CAPABILITY:
        return Precision("bf16", f"native on compute capability {major}.{minor}")
    return Precision("fp16", f"no native bf16 on compute capability {major}.{minor}")


def autocast(device, amp):
    """The autocast context of ``choose(device, amp)``."""
    return choose(device, amp).autocast()
