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
import re
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


# -----------------------------------------------------------------------------
# MFU: model FLOPs (model.flops_per_token) against the GPU's own peak

# Dense (no sparsity) tensor-core peak per GPU in FLOP/s, in the format --dtype auto trains in there: bf16 with fp32
# accumulation on Ampere and newer, fp16 on Volta and Turing. From NVIDIA's datasheets and architecture whitepapers
# (half the sparse figure where only that is given). Keyed by the whole product name as torch.cuda.get_device_name()
# reports it, normalized by device_key; a name not here (a MIG slice, a laptop part, a new GPU) is unknown, never a
# near match. Not listed on purpose: A10G (AWS states no tensor peak) and RTX A1000 (no published bf16 figure).
PEAK_FLOPS = {
    "B200": 2250e12, "B100": 1750e12,  # B200/B100 datasheet: 4.5/3.5 PFLOPS bf16 sparse
    "GB200": 2500e12,  # GB200 NVL72 datasheet: 360 PFLOPS bf16 sparse over 72 GPUs
    "H100": 989e12, "H100 SXM5": 989e12,  # H100 SXM ("NVIDIA H100 80GB HBM3"), H100 datasheet
    "H100 PCIE": 756e12, "H100 NVL": 835e12,  # H100 datasheet: 1513 / 1671 TFLOPS sparse
    "H200": 989e12, "H200 NVL": 836e12,  # H200 datasheet: SXM 1979, NVL 1671 TFLOPS sparse
    "GH200": 989e12,  # GH200 datasheet: the H100 SXM's tensor cores
    "H800": 989e12, "H800 PCIE": 756e12,  # H800 datasheet: as H100 SXM / PCIe (only the interconnect differs)
    "H20": 148e12,  # H20 datasheet
    "A100": 312e12, "A100 SXM4": 312e12, "A100 PCIE": 312e12,  # A100 datasheet, every form factor
    "A800 SXM4": 312e12, "A800 PCIE": 312e12,  # A800 datasheet
    "A40": 149.7e12, "A30": 165e12, "A10": 125e12,  # A40 / A30 / A10 datasheets
    "L40S": 362.05e12, "L40": 181.05e12, "L4": 121e12,  # L40S / L40 / L4 datasheets (L4: 242 sparse)
    "RTX 6000 ADA GENERATION": 364.2e12,  # RTX 6000 Ada datasheet, bf16 with fp32 accumulate
    "RTX A6000": 154.8e12, "RTX A5000": 111.1e12, "RTX A4000": 76.7e12,  # RTX A-series datasheets (half of sparse)
    "RTX 4090": 165.2e12, "RTX 3090": 71e12,  # Ada / GA102 whitepapers, bf16 with fp32 accumulate (GeForce rate)
    "V100 SXM2": 125e12, "V100 PCIE": 112e12, "V100S PCIE": 130e12,  # V100 / V100S datasheets, fp16 tensor
    "T4": 65e12,  # T4 datasheet, fp16 tensor
    "QUADRO RTX 8000": 130.5e12, "QUADRO RTX 6000": 130.5e12,  # Quadro RTX datasheets, fp16 tensor
}


def device_key(device_name):
    """'NVIDIA A100-SXM4-80GB' -> 'A100 SXM4', 'Tesla V100-PCIE-16GB' -> 'V100 PCIE', 'NVIDIA H100 80GB HBM3' ->
    'H100': no vendor or brand word, no memory size or HBM generation, '-' as a space, upper case."""
    words = device_name.replace("-", " ").replace("_", " ").upper().split()
    return " ".join(w for w in words if w not in ("NVIDIA", "TESLA", "GEFORCE") and not re.fullmatch(r"\d+GB?|HBM\d*E?", w))


def peak_flops(device_name):
    """Dense 16-bit tensor-core peak FLOP/s for a CUDA device name, or None when the device is not in the table."""
    return PEAK_FLOPS.get(device_key(device_name))


def estimate_mfu(tokens_per_sec, flops_per_tok, device_name):
    """Model FLOPs utilization as a fraction, or None for an unknown device (never a guess)."""
    peak = peak_flops(device_name)
    return None if peak is None else tokens_per_sec * flops_per_tok / peak


def format_mfu(mfu):
    return "unknown" if mfu is None else f"{100 * mfu:.1f}%"
