"""
hardware.py's choice of device and 16-bit format, tested on CPU by standing in for torch.cuda's queries: a V100
(7.0), a T4 or RTX 20xx (7.5), an A100 (8.0) and an H100 (9.0). torch.cuda.is_bf16_supported() says True on all
four (bf16 is emulated on 7.x), so the stand-in says so too: the choice must come from the compute capability.
"""
import glob
import os

import pytest
import torch

import bench
import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPUS = {(7, 0): "Tesla V100-SXM2-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-80GB", (9, 0): "NVIDIA H100"}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch see one CUDA GPU of the given compute capability."""
    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPUS[capability])
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return install


@pytest.mark.parametrize("capability,expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                 ((9, 0), "bf16")])
def test_auto_is_bf16_only_from_compute_capability_8(fake_gpu, capability, expected):
    fake_gpu(capability)
    device = hardware.pick_device("auto", local_rank=0)
    assert device == "cuda:0"
    assert hardware.pick_dtype("auto", device) == expected
    args = bench.resolve_args(bench.parse_args(["--device", "cuda"]))  # bench.py asks the same helper
    assert args.dtype == expected


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_explicit_bf16_on_an_older_gpu_runs_with_a_warning(fake_gpu, capsys, capability):
    fake_gpu(capability)
    assert hardware.pick_dtype("bf16", "cuda:0") == "bf16"
    warning = capsys.readouterr().err
    assert GPUS[capability] in warning and "emulated" in warning and "--dtype fp16" in warning
    assert hardware.pick_dtype("bf16", "cuda:0", warn=False) == "bf16" and not capsys.readouterr().err


def test_explicit_bf16_on_a_native_gpu_says_nothing(fake_gpu, capsys):
    fake_gpu((8, 0))
    assert hardware.pick_dtype("bf16", "cuda:0") == "bf16" and hardware.pick_dtype("fp16", "cuda:0") == "fp16"
    assert capsys.readouterr().err == ""


def test_cpu_choices_and_errors():
    assert hardware.pick_dtype("auto", "cpu") == "fp32" and hardware.pick_dtype("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        hardware.pick_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="not one of"):
        hardware.pick_dtype("fp8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            hardware.pick_device("cuda")
    with pytest.raises(ValueError, match="not available"):
        hardware.pick_device("tpu")
    assert hardware.autocast("fp32", "cpu").__class__.__name__ == "nullcontext"
    with hardware.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_no_script_asks_torch_whether_bf16_is_supported():
    """is_bf16_supported() is True on 7.x GPUs, where bf16 is emulated: every script goes through hardware.py."""
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        with open(path) as f:
            assert "is_bf16_supported" not in f.read() or path.endswith("hardware.py"), path


# -----------------------------------------------------------------------------
# MFU: each GPU's own peak, by its whole product name

# torch.cuda.get_device_name() strings as GPUs report them, and the dense peak each must get (TFLOP/s; None: unknown)
DEVICE_PEAKS = [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA H200 NVL", 836), ("NVIDIA H800", 989), ("NVIDIA H800 PCIe", 756), ("NVIDIA GH200 480GB", 989),
    ("NVIDIA GH200 144G HBM3e", 989), ("NVIDIA H20", 148), ("NVIDIA B200", 2250), ("NVIDIA GB200", 2500),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA A800-SXM4-80GB", 312), ("NVIDIA A40", 149.7), ("NVIDIA A30", 165),
    ("NVIDIA A10", 125), ("NVIDIA L40S", 362.05), ("NVIDIA L40", 181.05), ("NVIDIA L4", 121),
    ("NVIDIA RTX 6000 Ada Generation", 364.2), ("NVIDIA RTX A6000", 154.8), ("NVIDIA RTX A4000", 76.7),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce RTX 3090", 71), ("Tesla V100-SXM2-16GB", 125),
    ("Tesla V100-SXM2-32GB", 125), ("Tesla V100-PCIE-16GB", 112), ("Tesla V100S-PCIE-32GB", 130), ("Tesla T4", 65),
    # confusable or unknown: never another device's peak
    ("NVIDIA RTX A1000", None), ("NVIDIA A10G", None), ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
    ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA GeForce RTX 3090 Ti", None), ("NVIDIA RTX A4000 Laptop GPU", None),
    ("Some Future GPU", None), ("cpu", None),
]


@pytest.mark.parametrize("name,tflops", DEVICE_PEAKS)
def test_peak_flops_match_whole_product_names(name, tflops):
    assert hardware.peak_flops(name) == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_mfu_by_device_name_and_unknown_devices():
    assert hardware.estimate_mfu(1e6, 989e6, "NVIDIA H100 80GB HBM3") == pytest.approx(1.0)
    assert hardware.estimate_mfu(1e6, 836e6, "NVIDIA H200 NVL") == pytest.approx(1.0)
    assert hardware.estimate_mfu(1e6, 1e6, "Some Future GPU") is None
    assert hardware.format_mfu(None) == "unknown" and hardware.format_mfu(0.5123) == "51.2%"
