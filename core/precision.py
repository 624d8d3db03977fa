"""Mixed precision, chosen once per device for training, prediction and bench.py.

bf16 autocast only on GPUs with native bf16 (compute capability 8.0 and up: A100, H100, RTX 30xx and later);
``torch.cuda.is_bf16_supported()`` also answers yes where bf16 is emulated, which is slow. Older GPUs (T4 7.5,
V100 7.0, P100 6.0) get fp16 autocast with a loss scaler (fp16's narrow range underflows small gradients). The
CPU runs fp32, or bf16 autocast when asked (``cpu_bf16``) and the processor has bf16 instructions (AVX512-BF16,
AMX, Arm's BF16); elsewhere oneDNN would emulate them, slower than fp32. CUDA with AMP off runs fp32."""
import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_CAPABILITY = (8, 0)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo's names (x86, x86, Arm) of bf16 arithmetic
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    name: str                     # 'bf16', 'fp16' or 'fp32'
    reason: str = ""              # why, in a few words, for the start-up line
    device_type: str = "cuda"     # where the autocast acts: 'cuda' or 'cpu'

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
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler, enabled only for fp16."""
        return torch.amp.GradScaler("cuda", enabled=self.scaled)


@functools.lru_cache(maxsize=1)
def cpu_bf16_flag():
    """The bf16 flag this CPU reports in /proc/cpuinfo, or '' (none, or no /proc/cpuinfo: not Linux)."""
    if not CPUINFO.is_file():
        return ""
    words = set()
    for line in CPUINFO.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):  # x86 says flags, Arm says Features
            words.update(line.partition(":")[2].split())
    return next((flag for flag in CPU_BF16_FLAGS if flag in words), "")


def choose_cpu(cpu_bf16):
    """bf16 autocast when asked and the processor has bf16 arithmetic, else fp32 (saying why when asked)."""
    if not cpu_bf16:
        return Precision("fp32", device_type="cpu")
    flag = cpu_bf16_flag()
    if not flag:
        return Precision("fp32", "this CPU has no bf16 instructions", device_type="cpu")
    return Precision("bf16", f"native on this CPU ({flag})", device_type="cpu")


def choose(device, amp, cpu_bf16=False):
    """The Precision for ``device`` (torch.device or name): on CUDA with mixed precision asked for (``amp``) or not;
    on the CPU with bf16 autocast asked for (``cpu_bf16``: training's forward pass; predictions stay fp32) or not."""
    device = torch.device(device)
    if device.type != "cuda":
        return choose_cpu(cpu_bf16)
    if not amp:
        return Precision("fp32", "mixed precision off")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= NATIVE_BF16_CAPABILITY:
        return Precision("bf16", f"native on compute capability {major}.{minor}")
    return Precision("fp16", f"no native bf16 on compute capability {major}.{minor}")


def autocast(device, amp, cpu_bf16=False):
    """The autocast context of ``choose(device, amp, cpu_bf16)``."""
    return choose(device, amp, cpu_bf16).autocast()
