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
