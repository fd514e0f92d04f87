"""
The CUDA path: bf16 autocast, torch.compile, the chunked loss, flash attention, fp16 with GradScaler, the KV cache,
HellaSwag scoring, NCCL DDP / ZeRO / FSDP2, --batch-size auto and resume, each small and fast.

    python -m pytest -m gpu tests/test_gpu.py -n 0          # on a machine with a CUDA GPU (CI deselects the mark)
    GPU_TEST_DEVICE=cpu python -m pytest -m gpu tests/test_gpu.py -n 0   # a dry run of the tests' own code on CPU

The dry run checks the test code where it can (tiny configs, gloo instead of NCCL); the parts that exist only on
CUDA (flash attention, fp16 GradScaler, memory limits) skip there, and only there. Without a GPU and without the
dry-run variable, the module fails in one line.

Tolerances: bf16 keeps 8 significant bits (a relative rounding of 2^-9 per value), so a bf16 loss differs from the
fp32 loss of the same weights by about 1e-3 relative, and 20 steps of training on those losses let the runs drift
apart further: 3% relative is allowed between bf16 and fp32 runs and between compiled and eager bf16 runs (whose
kernels round differently). Two fp32 computations of one quantity by different kernel orders (chunked against full
cross-entropy, KV cache against recompute, GPU against CPU) agree to fp32 rounding: 1e-5 relative for a loss,
1e-4 absolute for logits of magnitude ~1-10.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hellaswag
import memory
import train_gpt2
from model import GPT, GPTConfig, chunked_cross_entropy
from test_train_gpt2 import ROOT as REPO, SCRIPT, read_log, write_hellaswag, write_shards

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("GPU_TEST_DEVICE", "cuda")
CUDA = DEVICE.startswith("cuda")
DRY = not CUDA  # the dry run: tiny sizes, gloo, no CUDA-only parts
SMALL = ["--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--seq-len", "256", "--batch-size", "8",
         "--total-batch-size", "4096"] if CUDA else \
    ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
     "--total-batch-size", "256"]
GPT2_124M = ["--seq-len", "1024", "--batch-size", "8", "--total-batch-size", "16384"] if CUDA else SMALL
QUIET = ["--warmup-steps", "2", "--eval-every", "0", "--hellaswag-every", "0", "--sample-every", "0",
         "--checkpoint-every", "0", "--max-lr", "1e-3", "--min-lr", "1e-4", "--device", DEVICE]


def cuda_only(what):
    if DRY:
        pytest.skip(f"dry run on {DEVICE}: {what} exists only on CUDA")


@pytest.fixture(scope="module", autouse=True)
def a_gpu():
    if CUDA and not torch.cuda.is_available():
        pytest.fail("tests/test_gpu.py needs a CUDA GPU (or GPU_TEST_DEVICE=cpu for a dry run of its code)",
                    pytrace=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    big = (400_000, 400_000, 400_000) if CUDA else (20_000, 20_000, 20_000)
    return write_shards(tmp_path_factory.mktemp("shards"), train_sizes=big, val_size=big[0] // 4)


def train(data_dir, log_dir, *flags, torchrun=False, timeout=600):
    """train_gpt2.py (under torchrun --nproc_per_node=1 if asked) -> its train losses {step: loss}."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if torchrun \
        else [sys.executable]
    result = subprocess.run(launcher + [SCRIPT, "--data-dir", data_dir, "--log-dir", str(log_dir), *QUIET, *flags],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return read_log(str(log_dir))["train"], result.stdout


def assert_trains(losses, steps):
    values = [losses[step] for step in range(steps)]
    assert all(math.isfinite(v) for v in values), values
    assert sum(values[-5:]) / 5 < values[0] - 0.5, values  # it learns the structured shards


def assert_close_runs(a, b, rel):
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


# -----------------------------------------------------------------------------
# 1. bf16, compiled: 124M and a small config, against eager and fp32


@pytest.mark.parametrize("size", ["small", "124M"])
def test_bf16_compiled_training_tracks_eager_and_fp32(data_dir, tmp_path, size):
    config = SMALL if size == "small" else GPT2_124M
    dtype = ["--dtype", "bf16"] if CUDA else ["--dtype", "fp32"]
    steps = ["--max-steps", "20"]
    compiled, out = train(data_dir, tmp_path / "compiled", *config, *dtype, "--compile", *steps)
    summary = rf"^device {DEVICE}\S* \(.*\), dtype {dtype[1]}, compile True, world size 1$"
    assert re.search(summary, out, re.M), out[:2000]
    eager, _ = train(data_dir, tmp_path / "eager", *config, *dtype, "--no-compile", *steps)
    assert_trains(compiled, 20)
    assert_trains(eager, 20)
    assert_close_runs(compiled, eager, rel=0.03)
    if size == "small":  # fp32 at 124M would double the module's time for the same check
        fp32, _ = train(data_dir, tmp_path / "fp32", *config, "--dtype", "fp32", "--no-compile", *steps)
        assert_close_runs(eager, fp32, rel=0.03)


# -----------------------------------------------------------------------------
# 2. the chunked loss on the device: F.cross_entropy on the full fp32 logits, and its gradients


def test_chunked_loss_equals_full_cross_entropy_and_its_gradients():
    torch.manual_seed(0)
    n, dim, vocab = (4096, 768, 50304) if CUDA else (256, 32, 512)
    h = torch.randn(n, dim, device=DEVICE, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, dim, device=DEVICE)).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=DEVICE)
    targets[::7] = -1  # ignored positions, as padding in HellaSwag-style rows
    rows = train_gpt2.loss_chunk_rows(vocab, "cuda", "bf16")  # what a CUDA run uses, whatever this device
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    try:
        chunked = chunked_cross_entropy(h, weight, targets, rows)
        grad_h, grad_w = torch.autograd.grad(chunked, (h, weight))
        full = F.cross_entropy(h @ weight.t(), targets, ignore_index=-1)
        ref_h, ref_w = torch.autograd.grad(full, (h, weight))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(grad_h, ref_h, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-4, atol=1e-8)


# -----------------------------------------------------------------------------
# 3. flash attention is the kernel that runs for the model's shapes (otherwise a silent fallback)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_flash_attention_runs_for_the_models_shapes(arch):
    cuda_only("the flash-attention kernel")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    fields = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False) if arch == "llama" else {}
    model = GPT(GPTConfig(n_layer=2, n_head=12, n_embd=768, **fields)).to(DEVICE)
    idx = torch.randint(0, 50257, (4, 1024), device=DEVICE)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(idx, idx, loss_chunk=train_gpt2.loss_chunk_rows(model.config.vocab_size, "cuda", "bf16"))
        loss.backward()
    assert math.isfinite(loss.item())


# -----------------------------------------------------------------------------
# 4. fp16 with GradScaler: trains, and an overflowing step is skipped


def test_fp16_with_grad_scaler_trains(data_dir, tmp_path):
    cuda_only("fp16 autocast with GradScaler")
    losses, _ = train(data_dir, tmp_path, *SMALL, "--dtype", "fp16", "--no-compile", "--max-steps", "20")
    assert_trains(losses, 20)
    assert "skip" not in read_log(str(tmp_path))  # no step was skipped for a non-finite update


def test_an_overflowing_fp16_step_is_skipped_by_the_scaler():
    cuda_only("fp16 autocast with GradScaler")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)).to(DEVICE)
    optimizer = model.configure_optimizers(0.1, 1e-3, "cuda")
    scaler = torch.amp.GradScaler("cuda")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 50257, (4, 64), device=DEVICE)
    autocast = torch.autocast("cuda", dtype=torch.float16)
    train_gpt2.forward_backward(model, x, x, autocast, 0, 1, scaler=scaler, loss_factor=float("inf"))
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < scale  # the scaler saw the overflow and backed off
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # and the step did not happen


# -----------------------------------------------------------------------------
# 5. KV-cache generation equals a full recompute, greedy, fp32


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_generation_equals_full_recompute(arch):
    torch.manual_seed(0)
    fields = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False) if arch == "llama" else {}
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, **fields)).to(DEVICE).eval()
    prompt = torch.randint(0, 50257, (2, 9), device=DEVICE)
    cached = model.generate(prompt, 40, temperature=0)
    idx = prompt
    with torch.no_grad():
        for _ in range(40):
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1, :50257].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx)


# -----------------------------------------------------------------------------
# 6. HellaSwag batched scoring on the device gives the CPU's predictions (fp32)


def test_hellaswag_scoring_on_the_device_equals_cpu(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=128)).eval()
    examples = hellaswag.load_examples(data_file=os.path.join(write_hellaswag(tmp_path, n=12), "hellaswag_val.jsonl"))
    on_cpu = hellaswag.score_examples(model, examples, "cpu", batch_size=4)
    on_device = hellaswag.score_examples(model.to(DEVICE), examples, DEVICE, batch_size=4)
    for a, b in zip(on_cpu, on_device):
        for key in ("pred", "pred_norm", "harness_pred", "harness_pred_norm"):
            assert a[key] == b[key]
        assert b["logprob"] == pytest.approx(a["logprob"], rel=1e-5, abs=1e-4)


# -----------------------------------------------------------------------------
# 7. NCCL: one rank. train_gpt2.py runs DDP under torchrun; it trains plain at world size 1 even with --fsdp or
# --shard-optimizer (memory.pick_strategy), so FSDP2 and ZeRO are driven directly here, through memory.py's own
# functions as train_gpt2.py calls them: shard, train 3 steps, gather the full state, rebuild from it (weights
# before sharding), and train 2 more, against plain training and against the run that went on without a stop.

STRATEGY_RUN = r"""
import copy, json, sys
import torch, torch.distributed as dist
import memory
from model import GPT, GPTConfig
device, strategy = sys.argv[1], sys.argv[2]
device_type = device.split(":")[0]
dist.init_process_group("nccl" if device_type == "cuda" else "gloo")  # torchrun's environment, one rank
x = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(0)).to(device)

def build(weights=None):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)).to(device)
    if weights is not None:
        model.load_state_dict(weights)
    if strategy == "fsdp":
        memory.shard_model(model, device_type)
    optimizer = model.configure_optimizers(0.1, 1e-3, device_type)  # fused AdamW on CUDA
    return model, memory.shard_optimizer(optimizer, strategy)

def train(model, optimizer, steps):
    losses = []
    for _ in range(steps):
        loss = model(x, x)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses

model, optimizer = build()
first = train(model, optimizer, 3)
weights, optimizer_state = copy.deepcopy(memory.full_state(model, optimizer, strategy))  # as if saved: not views
went_on = train(model, optimizer, 2)
model, optimizer = build(weights)
memory.load_optimizer_state(model, optimizer, optimizer_state, strategy)
resumed = train(model, optimizer, 2)
print(json.dumps(dict(first=first, went_on=went_on, resumed=resumed)))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory):
    script = tmp_path_factory.mktemp("strategies") / "run.py"
    script.write_text(STRATEGY_RUN)
    runs = {}
    for strategy in ("ddp", "zero", "fsdp"):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                 str(script), DEVICE, strategy], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": REPO})
        assert result.returncode == 0, f"{strategy}: {result.stderr[-3000:]}"
        runs[strategy] = json.loads(result.stdout.strip().splitlines()[-1])
    return runs


@pytest.mark.parametrize("strategy", ["zero", "fsdp"])
def test_one_rank_zero_and_fsdp_train_as_plain_and_resume_from_their_full_state(strategy_runs, strategy):
    plain, sharded = strategy_runs["ddp"], strategy_runs[strategy]
    assert sharded["first"] == pytest.approx(plain["first"], rel=1e-5)  # fp32, one rank: the same arithmetic
    assert sharded["resumed"] == pytest.approx(sharded["went_on"], rel=1e-5)  # (a ZeRO resume on CUDA failed here)
    assert plain["resumed"] == pytest.approx(plain["went_on"], rel=1e-5)


def test_one_rank_torchrun_trains_as_plain_python(data_dir, tmp_path):
    flags = [*SMALL, "--dtype", "fp32", "--no-compile", "--max-steps", "10"]
    plain, _ = train(data_dir, tmp_path / "plain", *flags)
    ddp, _ = train(data_dir, tmp_path / "ddp", *flags, torchrun=True)
    assert_close_runs(ddp, plain, rel=1e-4)  # fp32, the same micro-batches: rounding only


# -----------------------------------------------------------------------------
# 8. --batch-size auto: 124M on the whole GPU; 124M and 350M (activation checkpointing) on an emulated 24 GB card


def test_batch_size_auto_on_124m_trains_5_steps_and_resumes(data_dir, tmp_path):
    cuda_only("--batch-size auto's memory probe")
    auto = ["--seq-len", "1024", "--total-batch-size", "524288", "--batch-size", "auto", "--no-compile",
            "--checkpoint-every", "5"]
    _, out = train(data_dir, tmp_path, *auto, "--max-steps", "5")
    chosen = re.search(r"batch size auto: (\d+) rows per micro-step", out)
    assert chosen, out[:3000]
    _, out = train(data_dir, tmp_path, *auto, "--max-steps", "6")  # resumed: the notes compare the probed B
    assert "resuming from" in out and "--batch-size" not in "".join(re.findall(r"^note: .*$", out, re.M)), out[:3000]


def test_the_memory_reports_peak_is_the_first_steps_own(data_dir, tmp_path):
    """The report after the first step reads the allocator's peak: a step-0 eval (full logits) must not be in it."""
    cuda_only("the CUDA allocator's peak")
    peaks = []
    for evals in ("0", "1"):
        _, out = train(data_dir, tmp_path / evals, *SMALL, "--dtype", "bf16", "--no-compile", "--max-steps", "2",
                       "--eval-every", evals, "--val-tokens", "65536")
        peaks.append(float(re.search(r"peak allocated ([\d,.]+) MiB", out)[1].replace(",", "")))
    assert peaks[1] == pytest.approx(peaks[0], rel=0.1), peaks


@pytest.mark.parametrize("model_name, checkpointing", [("gpt2", False), ("gpt2-medium", True)])
def test_batch_size_auto_on_an_emulated_24_gb_card(model_name, checkpointing):
    cuda_only("a memory fraction of a CUDA device")
    from model import PRESETS
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 24 * 2**30 / total))
    try:
        torch.cuda.empty_cache()
        config = GPTConfig(**PRESETS[model_name])
        model = GPT(config).to("cuda")
        if checkpointing:
            memory.checkpoint_blocks(model)
        optimizer = model.configure_optimizers(0.1, 6e-4, "cuda")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        step = train_gpt2.micro_step_probe(model, autocast, config, "cuda", "bf16")
        batch_size, note = memory.auto_micro_batch(model, optimizer, "ddp", config, 524288, 1024, "bf16",
                                                   checkpointing, 1, "cuda", step)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(5):
            x = torch.randint(0, 50257, (batch_size, 1024), device="cuda")
            step(x, x)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated()
        predicted = memory.estimate(config, "ddp", 1, batch_size, 1024, "bf16", checkpointing).total
        assert batch_size >= 1, note
        assert abs(peak - predicted) <= 0.15 * predicted, (note, peak / 2**30, predicted / 2**30)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


# -----------------------------------------------------------------------------
# 9. resume on the device: a run stopped at step 10 and resumed gives the uninterrupted run's losses


def test_resume_on_the_device_matches_the_uninterrupted_run(data_dir, tmp_path):
    flags = [*SMALL, "--dtype", "bf16" if CUDA else "fp32", "--no-compile", "--max-steps", "20",
             "--checkpoint-every", "10"]
    whole, _ = train(data_dir, tmp_path / "whole", *flags)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "whole" / "model_00010.pt", resumed)
    after, out = train(data_dir, resumed, *flags)
    assert "resuming from" in out and sorted(after) == list(range(10, 20))
    # the same kernels on the same inputs: CUDA's reductions may still order additions differently run to run
    assert_close_runs(after, {s: whole[s] for s in after}, rel=1e-3)
