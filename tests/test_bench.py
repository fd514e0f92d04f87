import ast
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import bench
import hardware
import memory
from model import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# smaller than bench.py's CPU default so the subprocess runs stay quick on a busy 2-core machine
SMALL = ["--device", "cpu", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--vocab-size", "128",
         "--batch-size", "2", "--seq-len", "16"]


def run_bench(*flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: no oversubscription when cores are shared
    return subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def tiny_args(*flags):
    return bench.resolve_args(bench.parse_args([*SMALL, *flags]))


class FixedBatches:
    """Host rows (B, T+1) like the loader's: the same rows every time, or the given list of them in turn."""

    def __init__(self, *batches):
        self.batches, self.index = batches, 0

    def next_batch(self):
        rows = self.batches[self.index % len(self.batches)]
        self.index += 1
        return rows


def random_rows(args, batch_size=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, args.config.vocab_size, (batch_size or args.batch_size, args.seq_len + 1),
                         generator=generator)


# -----------------------------------------------------------------------------
# the command line, as a user meets it


def test_single_run_prints_sane_figures_and_a_profile():
    result = run_bench(*SMALL, "--steps", "3", "--warmup", "1", "--profile", "--profile-steps", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    tokens_per_sec = float(re.search(r"^tokens/s: ([\d,.]+)$", out, re.M).group(1).replace(",", ""))
    ms_per_step = float(re.search(r"^timed: 3 steps \| ms/step: ([\d.]+) median", out, re.M).group(1))
    assert tokens_per_sec > 0 and ms_per_step > 0
    # tokens/s is derived from the median step time and the tokens in a step: 2 * 16 here
    assert tokens_per_sec == pytest.approx(2 * 16 / (ms_per_step / 1000), rel=0.01)
    assert re.search(r"^MFU: unknown \(no peak FLOP/s known", out, re.M)  # CPU: never a guessed peak
    memory = float(re.search(r"^peak memory: ([\d,.]+) MiB \(process peak RSS, CPU\)$", out, re.M)
                   .group(1).replace(",", ""))
    assert memory > 10
    assert "path: eager, AdamW for-loop, flash attention, plain loss" in out  # the CPU default path
    assert re.search(r"^device: cpu .*\| torch \S+ \| \d{4}-\d\d-\d\d$", out, re.M)
    assert "profile: 1 steps, top kernels by self_cpu_time_total" in out and "Self CPU" in out


def test_compare_table_has_every_variant():
    # aot_eager still traces with dynamo and AOTAutograd but skips the C++ build that inductor needs on CPU
    result = run_bench(*SMALL, "--compare", "--steps", "4", "--rounds", "2", "--warmup", "1",
                       "--compile-backend", "aot_eager")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        for name in ("eager, AdamW for-loop, flash attention, plain loss",
                     "compiled (aot_eager), AdamW for-loop, flash attention, plain loss",
                     "eager, AdamW fused, flash attention, plain loss",
                     "eager, AdamW for-loop, explicit attention, plain loss",
                     "eager, AdamW for-loop, flash attention, chunked loss"):
            if line.startswith(name) or line.startswith("baseline: " + name):
                rows[name] = line
    assert len(rows) == 5, result.stdout
    assert rows["eager, AdamW for-loop, flash attention, plain loss"].startswith("baseline: ")
    assert re.search(r" 1\.00x \(1\.00-1\.00\) ", rows["eager, AdamW for-loop, flash attention, plain loss"])
    for line in rows.values():  # a figure with a ratio, or an honest reason why not
        assert re.search(r"\d\.\d\dx \(", line) or "unavailable: " in line, line


def test_write_shards_gives_train_gpt2_a_command_that_runs(tmp_path):
    # the check that train_gpt2.py's own step reaches bench.py's figure needs both on the same config and tokens
    shards = tmp_path / "shards"
    result = run_bench(*SMALL, "--steps", "1", "--warmup", "1", "--write-shards", str(shards))
    assert result.returncode == 0, result.stderr
    train = np.load(shards / "edufineweb_train_000001.npy")
    assert train.dtype == np.uint16 and len(train) == 2 * 2 * 16 + 1 and int(train.max()) < 128
    assert np.load(shards / "edufineweb_val_000000.npy").dtype == np.uint16
    command = result.stdout.strip().splitlines()[-1].split()
    assert command[:2] == ["python", "train_gpt2.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train_run = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
    assert train_run.returncode == 0, train_run.stderr
    assert re.search(r"^step +1 \| loss [\d.]+ .*\| dt [\d.]+ms", train_run.stdout, re.M)


def test_bad_input_is_one_line_error():
    result = run_bench(*SMALL, "--batch-size", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --batch-size must be at least 1, got 0"


@pytest.mark.parametrize("flags, message", [
    (["--n-head", "3"], "not divisible by n_head"),
    (["--device", "tpu"], "is not supported"),
    (["--compare", "--steps", "2", "--rounds", "5"], "--compare needs --steps >= --rounds"),
    (["--trace", "t.json"], "--trace needs --profile"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--seq-len", "2048"], "longer than the model's block_size 1024"),
    (["--dtype", "fp16"], "--dtype fp16 needs a CUDA GPU"),
    (["--compile", "--compile-backend", "nosuch"], "is not a torch.compile backend"),
    (["--write-shards", "d", "--compare"], "--write-shards only writes shards"),
])
def test_bad_input_messages(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_args(*flags)


def test_make_args_is_the_command_line_as_keywords():
    # dev/bench_suite.py builds its configurations with make_args: each must be what the same flags give bench.py
    flags = ["--arch", "llama", "--grad-accum", "2", "--no-compile", "--activation-checkpointing", "--dtype", "bf16"]
    keywords = dict(device="cpu", n_layer=2, n_head=2, n_embd=32, vocab_size=128, batch_size=2, seq_len=16,
                    arch="llama", grad_accum=2, compile=False, activation_checkpointing=True, dtype="bf16")
    assert vars(bench.make_args(**keywords)) == vars(tiny_args(*flags))
    with pytest.raises(TypeError, match="bench.py has no flag for batch"):
        bench.make_args(batch=2)
    with pytest.raises(ValueError, match="--dtype fp8 is not one of bf16, fp16, fp32"):
        bench.make_args(dtype="fp8")
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):  # resolve_args' checks apply
        bench.make_args(device="cpu", batch_size=0)


# -----------------------------------------------------------------------------
# what the figures stand for


@pytest.mark.parametrize("arch, layer_heads", [("gpt2", None), ("llama", None), ("modern", None), ("postln", None),
                                                ("gpt2", [1, 2])])
def test_explicit_attention_is_the_models_own_forward(arch, layer_heads, monkeypatch):
    # --compare's "flash vs explicit attention" ratio is only fair if both compute one function: for every --arch the
    # explicit path must come after the same RoPE (llama, modern) and QK-norm (modern), over the same pruned heads
    args = tiny_args("--arch", arch)
    torch.manual_seed(0)
    flash = GPT(dataclasses.replace(args.config, layer_heads=layer_heads))
    with torch.no_grad():  # away from the init, whose zeroed projections (modern) would hide a wrong attention
        for p in flash.parameters():
            p.add_(0.1 * torch.randn_like(p))
    explicit = bench.use_explicit_attention(copy.deepcopy(flash))
    x, y = bench.to_device(random_rows(args, batch_size=4), "cpu")
    flash_logits, flash_loss = flash(x, y)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("the explicit path called scaled_dot_product_attention")
    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)  # the compared function really is the other one
    explicit_logits, explicit_loss = explicit(x, y)
    # fp32 on both sides, so they differ only in the order SDPA's CPU kernel sums in (blocked, online softmax): a
    # few float32 epsilons (1.2e-7) per value; measured at most 1.2e-6 on these logits and 1.2e-7 on the gradients,
    # so 1e-5 keeps a margin, while bench's old copy without RoPE and QK-norm was off by 1.0 in the logits
    torch.testing.assert_close(explicit_logits, flash_logits, atol=1e-5, rtol=1e-5)
    assert explicit_loss.item() == pytest.approx(flash_loss.item(), abs=1e-5)
    flash_loss.backward()
    explicit_loss.backward()
    for (name, p), q in zip(flash.named_parameters(), explicit.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert explicit.state_dict().keys() == flash.state_dict().keys()  # checkpoints stay model.py's
    assert all(block.attn.attention is None for block in explicit.transformer.h)  # nothing kept between steps


def test_step_trains_the_model():
    # the timed step must be real training: weights move and the loss on a repeated batch goes down
    args = tiny_args()
    step, model, _ = bench.make_train_step(args, batches=FixedBatches(random_rows(args)), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step()[0] for _ in range(8)]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_grad_accumulation_step_equals_one_big_batch():
    # loss / grad_accum: two micro-steps of 2 rows give the loss, gradient and update of one step of 4 rows
    args = tiny_args()
    rows = random_rows(args, batch_size=4)
    big_step, big_model, _ = bench.make_train_step(tiny_args("--batch-size", "4"), batches=FixedBatches(rows))
    accum_step, accum_model, _ = bench.make_train_step(tiny_args("--grad-accum", "2"),
                                                       batches=FixedBatches(rows[:2], rows[2:]))
    (big_loss, big_norm), (accum_loss, accum_norm) = big_step(), accum_step()
    assert accum_loss == pytest.approx(big_loss, abs=1e-6)
    assert accum_norm == pytest.approx(big_norm, rel=1e-5)  # Adam would hide a gradient scale error; the norm not
    for p, q in zip(big_model.parameters(), accum_model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)


def test_random_batches_look_like_the_shard_loaders():
    batches = bench.RandomBatches(2, 16, 128, seed=0, pool_size=2)
    rows = batches.next_batch()
    assert rows.shape == (2, 17) and rows.dtype == torch.long  # (B, T+1) int64 host rows, as ShardLoader's
    assert 0 <= int(rows.min()) and int(rows.max()) < 128
    assert not torch.equal(rows, batches.next_batch())  # a new batch each micro-step, not one cached tensor
    x, y = bench.to_device(rows, "cpu")
    assert x.shape == y.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one


def test_the_loss_variant_trains_on_the_other_loss_with_the_same_result(monkeypatch):
    # --compare's "chunked vs plain loss" row decides, on a GPU, whether the chunked loss pays for its graph break: the
    # variant must really run the other loss, and compute the same step (float rounding apart)
    import model
    calls, chunked_cross_entropy = [], model.chunked_cross_entropy
    monkeypatch.setattr(model, "chunked_cross_entropy", lambda *a: calls.append(a[3]) or chunked_cross_entropy(*a))
    args = tiny_args("--grad-accum", "2")
    assert bench.default_loss(args) == "plain" and bench.describe(args, False, False, "flash").endswith(", plain loss")
    assert bench.compare_settings(args)[-1]["loss"] == "chunked"
    plain = bench.make_train_step(args, loss="plain")[0]()
    assert calls == []
    chunked = bench.make_train_step(args, loss="chunked")[0]()
    assert calls == [max(1, memory.LOSS_CHUNK_ELEMENTS // args.config.vocab_size)] * 2  # one per micro-step
    assert chunked == pytest.approx(plain, rel=1e-5)  # (loss, norm) of one step: the same arithmetic up to rounding


def test_a_variant_that_cannot_run_is_a_row_not_a_crash(monkeypatch, capsys):
    def broken(model):
        raise RuntimeError("no kernel for this\nsecond line")
    monkeypatch.setattr(bench, "use_explicit_attention", broken)
    args = tiny_args("--compare", "--steps", "2", "--rounds", "2", "--warmup", "1", "--compile-backend", "eager")
    comparison = bench.run_compare(args)
    assert list(comparison.failures) == ["eager, AdamW for-loop, explicit attention, plain loss"]
    assert len(comparison.ratios("compiled (eager), AdamW for-loop, flash attention, plain loss")) == 2  # per round
    bench.print_compare_table(args, comparison)
    out = capsys.readouterr().out
    assert re.search(r"^eager, AdamW for-loop, explicit attention, plain loss +unavailable: RuntimeError: no kernel "
                     r"for this$", out, re.M)
    assert re.search(r"^compiled \(eager\), AdamW for-loop, flash attention, plain loss +[\d,]+ ", out, re.M)


# -----------------------------------------------------------------------------
# on a GPU (CI deselects these with -m "not gpu"; run them where a GPU is lent)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_and_compare():
    small = ["--n-layer", "2", "--n-head", "2", "--n-embd", "128", "--batch-size", "4", "--seq-len", "128"]
    result = run_bench(*small, "--steps", "4", "--warmup", "2")  # the CUDA defaults: bf16, compiled, fused AdamW
    assert result.returncode == 0, result.stderr
    assert re.search(r"^path: compiled \(inductor\), AdamW fused, flash attention, chunked loss$", result.stdout, re.M)
    assert re.search(r"^MFU: (\d+\.\d%|unknown) \(", result.stdout, re.M)
    assert "(torch.cuda.max_memory_allocated)" in result.stdout
    result = run_bench(*small, "--compare", "--steps", "4", "--rounds", "2", "--warmup", "2")
    assert result.returncode == 0, result.stderr
    for name in ("eager, AdamW fused", "AdamW foreach", "explicit attention", "flash attention, plain loss"):
        assert name in result.stdout


# -----------------------------------------------------------------------------
# --memory: the memory model (memory.py), checked against measured tensors in tests/test_memory.py


def test_memory_model_table_for_gpt2_xl_on_eight_24_gb_gpus():
    result = run_bench("--memory", "--model", "gpt2-xl", "--world-size", "8", "--gpu-mem", "24")
    assert result.returncode == 0, result.stderr
    rows = {(cells[0], cells[1]): cells for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in result.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| strategy"))}
    assert len(rows) == 6  # DDP, ZeRO-1, FSDP2, each with and without activation checkpointing
    assert "1,557,686,400 parameters" in result.stdout and "activations at B=1" in result.stdout
    ddp, fsdp = rows[("DDP", "off")], rows[("FSDP2 (fully sharded)", "on")]
    assert ddp[2:5] == ["5.80", "5.80", "11.61"]  # fp32 weights, grads, AdamW's two states: 16 bytes/parameter
    assert ddp[-1].startswith("does not fit")
    assert fsdp[2:5] == ["0.73", "0.73", "1.45"]  # all of it over 8 ranks
    assert fsdp[-1].startswith("fits B <= ") and int(fsdp[-2]) > int(rows[("FSDP2 (fully sharded)", "off")][-2]) > 0


# -----------------------------------------------------------------------------
# python -m dev.bench_suite: the whole GPU path; here its smoke version, every part on CPU with tiny configs


def run_suite(*flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dev.bench_suite", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_suite_measures_each_batch_size_with_a_static_graph():
    """train_gpt2.py compiles one shape; the suite measures B=16, 32, 64 in one process, where Dynamo's automatic
    dynamic shapes would turn the second compile into a dynamic-batch graph for every later figure. A backend that
    records the graphs' input shapes shows each measurement compiled for its own, static, batch size."""
    import torch._dynamo
    from dev import bench_suite
    graphs = []

    def record(graph, example_inputs):  # a dynamic graph takes its symbolic sizes as SymInt inputs
        graphs.append([tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in example_inputs])
        return graph.forward
    torch._dynamo.register_backend(record, name="record_shapes")
    size = {**bench_suite.SIZES["smoke"], "compile": True, "backend": "record_shapes"}
    for batch_size in (2, 4):
        bench_suite.measure(bench_suite.bench_args(size, "cpu", batch_size))
    assert [graph[0] for graph in graphs] == [(2, 64), (4, 64)], graphs  # each batch size compiled, static


@pytest.mark.slow
def test_suite_smoke_runs_every_part_and_writes_markdown_and_json(tmp_path):
    json_path = tmp_path / "suite.json"
    result = run_suite("--smoke", "--json", str(json_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("# python -m dev.bench_suite --smoke\n")
    for title in ("## throughput (tiny)", "## variants", "## fp16 + GradScaler", "## train_gpt2.py against bench.py",
                  "## HellaSwag batching", "## generation", "## big model memory"):
        assert title in out
    report = json.loads(json_path.read_text())
    assert report["smoke"] and report["device"] == "cpu" and report["torch"] == torch.__version__
    parts = report["parts"]
    assert all("error" not in row for row in parts["throughput"])
    assert all("error" not in part for name, part in parts.items() if name != "throughput")
    assert [row["batch_size"] for row in parts["throughput"]] == [2, 4]
    # the variants are bench.py --compare's, named as its table names them (CPU: eager and for-loop AdamW default)
    assert parts["variants"]["baseline"] == "eager, AdamW for-loop, flash attention, plain loss"
    assert set(parts["variants"]["ratios"]) == {"compiled (eager), AdamW for-loop, flash attention, plain loss",
                                                 "eager, AdamW fused, flash attention, plain loss",
                                                 "eager, AdamW for-loop, explicit attention, plain loss",
                                                 "eager, AdamW for-loop, flash attention, chunked loss"}
    assert parts["train_script"]["steps"] == 6 and parts["train_script"]["ratio"] > 0
    assert parts["hellaswag"]["same_predictions"] and parts["generation"]["same_tokens_fraction"] == 1.0
    assert parts["big_model"]["one_rank"]["peak_memory_mib"] > 0


def test_bench_imports_nothing_from_dev():
    # arrows point downward: dev/bench_suite.py imports bench.py, so bench.py must not import dev/, not even lazily
    # inside a function (the old --suite flag did), which is why this reads the source rather than sys.modules
    tree = ast.parse(open(os.path.join(ROOT, "bench.py")).read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name == "dev" or name.startswith("dev.")], imported


def test_suite_without_a_gpu_or_smoke_is_one_line_error():
    result = run_suite("--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the suite measures the GPU path: run it on a GPU, or add --smoke for the " \
                                    "CPU version"


def test_arch_sets_the_model_and_its_flops():
    from model import flops_per_token
    llama = tiny_args("--arch", "llama").config
    assert (llama.mlp, llama.pos_emb, llama.bias) == ("swiglu", "rope", False) and llama.mlp_hidden > 0
    gpt2 = tiny_args().config
    assert flops_per_token(llama, 16) - flops_per_token(gpt2, 16) == 6 * 2 * 32 * (3 * llama.mlp_hidden - 2 * 128)
    result = run_bench(*SMALL, "--arch", "modern", "--steps", "2", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert "arch modern (relu2 MLP of width 128)" in result.stdout
    assert f"flops/token: {flops_per_token(tiny_args('--arch', 'modern').config, 16):.4g} " in result.stdout


# -----------------------------------------------------------------------------
# --plan: time and money before renting, arithmetic only


def plan_of(*flags):
    return bench.plan_run(bench.resolve_args(bench.parse_args(["--plan", *flags])))


def test_plan_hours_and_cost_are_the_hand_computed_ones():
    plan = plan_of("--gpu", "a100-80gb", "--gpus", "8", "--tokens", "10e9", "--mfu", "0.4", "--price", "2.5")
    # GPT-2 124M at T=1024 with the padded vocabulary, by hand: matmul weights 4*768*(12*768) + 12*2*768*3072 +
    # 50304*768 = 123,568,128, times 6, plus attention 6*12*768*1024
    flops_per_token = 6 * 123_568_128 + 6 * 12 * 768 * 1024
    assert flops_per_token == 798_031_872 == plan.flops_per_tok
    assert plan.peak == 312e12
    hours = 10e9 * 798_031_872 / (8 * 312e12 * 0.4) / 3600
    assert plan.hours == pytest.approx(hours, rel=1e-12)
    assert plan.hours == pytest.approx(2.2203, abs=1e-4)  # 7.98e18 FLOPs at 9.984e14 FLOP/s: 7993 s
    assert plan.dollars == pytest.approx(hours * 8 * 2.5, rel=1e-12)
    assert (plan.mfu, plan.mfu_source, plan.mfu_assumed) == (0.4, "given (--mfu)", False)
    assert plan.steps == 19074  # 10e9 / 524,288 = 19073.5, rounded up


def test_plan_from_steps_uses_the_total_batch_size():
    plan = plan_of("--gpu", "h100", "--steps", "1000", "--total-batch-size", "262144", "--mfu", "0.5")
    assert plan.tokens == 1000 * 262144
    assert plan.hours == pytest.approx(1000 * 262144 * 798_031_872 / (1 * 989e12 * 0.5) / 3600, rel=1e-12)
    assert plan.dollars is None


def test_plan_fits_gpt2_on_ddp_and_reaches_the_total_batch():
    plan = plan_of("--gpu", "rtx-3090", "--gpus", "4", "--tokens", "10e9")
    fit = plan.fit
    assert (fit.strategy, fit.activation_checkpointing) == ("ddp", False)
    assert 1 <= fit.batch_size <= fit.largest
    assert fit.batch_size * fit.grad_accum * 1024 * 4 == 524288  # train_gpt2.py's total batch, exactly


def test_plan_shards_gpt2_xl_on_24_gib_cards():
    # the memory model says DDP cannot hold GPT-2 XL's states on 24 GiB at any micro-batch (docs/speed.md's table)
    config = bench.resolve_args(bench.parse_args(["--plan", "--gpu", "rtx-4090", "--gpus", "8", "--model", "gpt2-xl",
                                                  "--steps", "10"])).config
    for checkpointing in (False, True):
        assert memory.largest_micro_batch(config, "ddp", 8, 1024, 24 * 2**30, "bf16", checkpointing) == 0
    fit = plan_of("--gpu", "rtx-4090", "--gpus", "8", "--model", "gpt2-xl", "--steps", "10").fit
    assert fit.strategy in ("zero", "fsdp")
    assert fit.batch_size * fit.grad_accum * 1024 * 8 == 524288
    one_card = plan_of("--gpu", "rtx-4090", "--model", "gpt2-xl", "--steps", "10")
    assert one_card.fit is None  # one GPU has nothing to shard over
    assert bench.describe_fit(one_card).startswith("nothing fits: not even DDP with activation checkpointing")


def test_plan_command_names_the_strategy(capsys):
    bench.main(["--plan", "--gpu", "rtx-4090", "--gpus", "8", "--model", "gpt2-xl", "--steps", "10"])
    out = capsys.readouterr().out
    command = re.search(r"^\| command \| (.*) \|$", out, re.M).group(1)
    assert command.startswith("torchrun --standalone --nproc_per_node=8 train_gpt2.py --model gpt2-xl --batch-size ")
    assert "--shard-optimizer" in command or "--fsdp" in command


def test_fp16_gpus_never_plan_fsdp():
    # memory.pick_strategy refuses FSDP2 with fp16, which V100 and T4 train in
    assert bench.GPU_TYPES["t4"]["dtype"] == "fp16"
    assert [s for s, _ in bench.strategies_to_try(8, "fp16")] == ["ddp", "ddp", "zero", "zero"]
    assert [s for s, _ in bench.strategies_to_try(1, "bf16")] == ["ddp", "ddp"]


def test_every_gpu_type_has_a_peak_in_hardware():
    for gpu in bench.GPU_TYPES.values():
        assert gpu["name"] in hardware.PEAK_FLOPS
    # GeForce: the peak used is the fp32-accumulate one, half the fp16-accumulate rate named beside it
    for name, (fp16_accumulate, _) in bench.FP16_ACCUMULATE_PEAK.items():
        assert hardware.PEAK_FLOPS[bench.GPU_TYPES[name]["name"]] == pytest.approx(fp16_accumulate / 2, rel=1e-3)
    plan = plan_of("--gpu", "RTX-3090", "--tokens", "1e9")
    assert plan.peak == 71e12
    assert "71 TFLOP/s dense bf16 per GPU" in bench.describe_peak(plan)
    assert "half of the 142 with fp16 accumulation" in bench.describe_peak(plan)


def test_plan_warns_that_the_default_mfu_is_assumed(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "SPEED_DOC", str(tmp_path / "missing.md"))
    bench.main(["--plan", "--gpu", "h100", "--tokens", "10e9"])
    out = capsys.readouterr().out
    assert re.search(r"^\| MFU \| 0\.40 \(assumed: llm\.c's", out, re.M)
    assert re.search(r"^warning: MFU 0\.40 is an assumption, not a measurement", out, re.M)
    assert "nothing here is measured" in out
    bench.main(["--plan", "--gpu", "h100", "--tokens", "10e9", "--mfu", "0.5"])
    out = capsys.readouterr().out
    assert "| MFU | 0.50 (given (--mfu)) |" in out and "warning: MFU" not in out


def test_plan_takes_a_measured_mfu_from_speed_md(monkeypatch, tmp_path):
    doc = tmp_path / "speed.md"
    doc.write_text("### Measured throughput: GPT-2 124M, T=1024, bf16, one GPU\n\n"
                   "| device | date | torch | config | tokens/s | ms/step | MFU | peak memory |\n"
                   "|---|---|---|---|---|---|---|---|\n"
                   "| NVIDIA H100 80GB HBM3 | 2026-12-05 | 2.13 | B=64 | 500,000 | 1048 | 50.6% | 60 GiB |\n"
                   "| NVIDIA A100-SXM4-80GB | 2026-12-05 | 2.13 | B=64 | 150,000 | 3495 | not known | 60 GiB |\n\n"
                   "### Next section\n| NVIDIA H100 80GB HBM3 | x | x | x | x | x | 99% | x |\n")
    monkeypatch.setattr(bench, "SPEED_DOC", str(doc))
    plan = plan_of("--gpu", "h100-sxm", "--tokens", "10e9")
    assert plan.mfu == pytest.approx(0.506) and not plan.mfu_assumed
    assert plan.mfu_source.startswith("measured on this repository (docs/speed.md: NVIDIA H100 80GB HBM3, 2026-12-05")
    assert plan_of("--gpu", "a100-80gb", "--tokens", "10e9").mfu_assumed  # a row without an MFU is no measurement
    assert plan_of("--gpu", "h100-pcie", "--tokens", "10e9").mfu_assumed  # another GPU's row does not apply


def test_plan_unknown_gpu_is_one_line_error():
    result = run_bench("--plan", "--gpu", "a100", "--tokens", "10e9")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --gpu a100 is not known: use one of {', '.join(bench.GPU_TYPES)}"
    assert "a100-80gb" in result.stderr and "rtx-3090" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--tokens", "1e9"], "--plan needs --gpu"),
    (["--gpu", "h100"], "--plan needs --tokens (e.g. 10e9) or --steps"),
    (["--gpu", "h100", "--tokens", "1e9", "--steps", "5"], "--plan needs --tokens (e.g. 10e9) or --steps"),
    (["--gpu", "h100", "--tokens", "1e9", "--mfu", "1.5"], "--mfu is a fraction of the peak"),
    (["--gpu", "h100", "--tokens", "1e9", "--batch-size", "8"], "drop --batch-size"),
    (["--gpu", "h100", "--tokens", "1e9", "--gpus", "3"], "is not a multiple of seq-len x gpus"),
])
def test_plan_bad_input_messages(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench.resolve_args(bench.parse_args(["--plan", *flags]))


def test_plan_flags_without_plan_are_an_error():
    with pytest.raises(ValueError, match=re.escape("--gpu goes with --plan")):
        tiny_args("--gpu", "h100")
