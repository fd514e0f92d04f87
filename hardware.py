"""
Which device and which 16-bit format a script runs on. Every script asks here, so that train_gpt2.py, sample.py,
hellaswag.py, bench.py, app.py, heads.py and eval_harness.py choose alike.

    device = pick_device("auto")              # cuda, then mps, then cpu
    dtype = pick_dtype("auto", device)        # "bf16" | "fp16" | "fp32"
    with autocast(dtype, device): ...

bf16 is chosen only where the GPU computes it natively (compute capability 8.0 and newer: A100, RTX 30xx, H100).
torch.cuda.is_bf16_supported() says True on V100, T4 and RTX 20xx too, where bf16 is emulated without tensor
cores or flash attention; there "auto" picks fp16 (with a GradScaler when training).
"""

import contextlib
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # None: no autocast, full fp32


def pick_device(requested="auto", local_rank=0, ddp=False):
    """'auto': cuda (this process's local_rank GPU), then mps, then cpu. ValueError for a device not here."""
    mps = torch.backends.mps.is_available() and not ddp  # no DDP backend for MPS
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}, but no CUDA GPU is visible; use --device cpu")
        requested = f"cuda:{local_rank}" if requested == "cuda" else requested
        torch.cuda.set_device(requested)
    elif requested not in ("cpu", "mps") or (requested == "mps" and not mps):
        raise ValueError(f"--device {requested} is not available: use auto, cpu, cuda, cuda:N, or mps (one process)")
    return requested


def native_bf16(device):
    """True on a CUDA GPU of compute capability >= 8.0, where bf16 runs on tensor cores."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_dtype(requested, device, warn=True):
    """'auto': bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on CPU and MPS. An explicit bf16 on an
    older GPU is kept, with a warning that it is emulated. ValueError for fp16 off CUDA."""
    device_type = device.split(":")[0]
    if requested == "auto":
        if device_type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if requested not in DTYPES:
        raise ValueError(f"--dtype {requested} is not one of auto, {', '.join(DTYPES)}")
    if requested == "fp16" and device_type != "cuda":
        raise ValueError(f"--dtype fp16 needs a CUDA GPU (got {device}); use bf16 or fp32")
    if requested == "bf16" and device_type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        if warn:
            print(f"warning: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no native "
                  f"bf16: it is emulated, much slower than --dtype fp16", file=sys.stderr)
    return requested


def autocast(dtype, device):
    """The autocast context for a dtype name from pick_dtype; fp32 is no autocast at all."""
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=DTYPES[dtype])
