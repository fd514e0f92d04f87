"""
Training throughput and MFU of GPT-2, measured on random tokens with train_gpt2.py's own training step.

    python bench.py                                 # GPT-2 124M, B=64, T=1024, bf16, compiled (CPU: a tiny model)
    python bench.py --batch-size 32 --grad-accum 2  # the same tokens per step in half the activation memory
    python bench.py --compare                       # eager/compiled, fused/foreach AdamW, flash/explicit attention
    python bench.py --profile                       # and then the top kernels from torch.profiler
    python bench.py --memory --model gpt2-xl --world-size 8 --gpu-mem 24   # what fits, before renting (memory.py)
    python bench.py --plan --gpu a100-80gb --gpus 8 --tokens 10e9 --price 2  # hours and dollars, before renting

The whole GPU path in one command is a developer tool: python -m dev.bench_suite (it imports bench.py, not the
other way round).

Figures are the median over the timed steps; warm-up (and with it torch.compile) is excluded. MFU counts the
model FLOPs of model.flops_per_token (6*N + 6*n_layer*n_embd*T) against the device's dense bf16 peak, and is
"unknown" for a device model.py has no peak for (CPU included). Random tokens cost the same FLOPs as text.
"""

import argparse
import dataclasses
import math
import os
import resource
import statistics
import sys
import time
from datetime import date

import numpy as np
import torch

import hardware
import memory
from hardware import DTYPES, estimate_mfu, format_mfu, pick_dtype
from model import ARCHS, FLOPS_CONVENTION, GPT, GPTConfig, PRESETS, flops_per_token
from train_gpt2 import chunked_loss_rows, forward_backward, loss_chunk_rows, to_device  # the training step itself

# -----------------------------------------------------------------------------
# defaults, in one place: a GPU measures real GPT-2 training; a CPU runs a smoke-test-sized model

DEVICE_DEFAULTS = {
    "cuda": dict(model="gpt2", batch_size=64, seq_len=1024, compile=True, steps=50, warmup=10),
    "cpu": dict(model="tiny", batch_size=8, seq_len=64, compile=False, steps=20, warmup=3),
}
# "tiny" is not GPT-2: its vocabulary is 512 random token ids, not the 50304-row (padded) GPT-2 table, so its
# figures say whether the code runs and how variants compare on this machine, never what GPT-2 would get
TINY = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512)
PADDED_VOCAB_SIZE = 50304  # GPT-2's 50257 rounded up to a multiple of 128, as train_gpt2.py trains it
LEARNING_RATE = 6e-4  # GPT-2 124M's max lr; the value does not change the cost of a step
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
# the flags that take one of a list, checked by argparse on the command line and by make_args for keywords
CHOICES = dict(model=[*PRESETS, "tiny"], arch=list(ARCHS), dtype=list(DTYPES),
               compile_mode=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])

# --plan's GPUs: a friendly name -> hardware.PEAK_FLOPS's name for it (what device_key makes of the name
# torch.cuda.get_device_name reports: the peak, and the rows of docs/speed.md's measured table that apply), the memory
# per GPU from the datasheet named, and the dtype train_gpt2.py's --dtype auto picks there (fp16 below compute
# capability 8.0). Datasheet GB are binary here (an A100 80GB shows 81920 MiB); a T4 with ECC on shows 15360 of its
# 16384 MiB, which memory.usable_bytes' 1 GiB reserve and 10% slack cover.
GPU_TYPES = {
    "a100-80gb": dict(name="A100 SXM4", memory_gb=80, dtype="bf16"),  # A100 datasheet: 80GB HBM2e
    "a100-40gb": dict(name="A100 SXM4", memory_gb=40, dtype="bf16"),  # A100 datasheet: 40GB HBM2
    "h100": dict(name="H100", memory_gb=80, dtype="bf16"),  # H100 datasheet, SXM: 80GB ("NVIDIA H100 80GB HBM3")
    "h100-sxm": dict(name="H100", memory_gb=80, dtype="bf16"),
    "h100-pcie": dict(name="H100 PCIE", memory_gb=80, dtype="bf16"),  # H100 datasheet, PCIe: 80GB
    "h200": dict(name="H200", memory_gb=141, dtype="bf16"),  # H200 datasheet, SXM: 141GB HBM3e
    "l40s": dict(name="L40S", memory_gb=48, dtype="bf16"),  # L40S datasheet: 48GB GDDR6
    "l4": dict(name="L4", memory_gb=24, dtype="bf16"),  # L4 datasheet: 24GB GDDR6
    "rtx-3090": dict(name="RTX 3090", memory_gb=24, dtype="bf16"),  # GA102 whitepaper: 24 GB GDDR6X
    "rtx-4090": dict(name="RTX 4090", memory_gb=24, dtype="bf16"),  # Ada (AD102) whitepaper: 24 GB GDDR6X
    "v100": dict(name="V100 SXM2", memory_gb=16, dtype="fp16"),  # V100 datasheet: 16 or 32 GB HBM2
    "v100-32gb": dict(name="V100 SXM2", memory_gb=32, dtype="fp16"),
    "t4": dict(name="T4", memory_gb=16, dtype="fp16"),  # T4 datasheet: 16 GB GDDR6
}
# GeForce cards accumulate in fp32 at half the rate they accumulate in fp16, and bf16 has only fp32 accumulation;
# training accumulates in fp32, so hardware.PEAK_FLOPS holds the halved figure. The fp16-accumulate dense peaks,
# said next to it: NVIDIA Ampere GA102 GPU Architecture whitepaper (RTX 3090: 142 fp16-accumulate, 71 fp32) and
# NVIDIA Ada GPU Architecture whitepaper (RTX 4090: 330.3 fp16-accumulate, 165.2 fp32), TFLOP/s without sparsity.
FP16_ACCUMULATE_PEAK = {"rtx-3090": (142e12, "GA102 whitepaper"), "rtx-4090": (330.3e12, "Ada whitepaper")}
# No GPU has run this repository yet, so the default MFU is llm.c's: GPT-2 124M trained at about 38-40% MFU on
# 8xH100 (its reported ~468k tokens/s per GPU). Always printed with a warning that it is an assumption.
DEFAULT_MFU = 0.40
DEFAULT_MFU_SOURCE = "assumed: llm.c's reported ~38-40% for GPT-2 124M on 8xH100, not measured on this repository"
SPEED_DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs", "speed.md")


class BenchError(Exception):
    """A problem the user can act on, printed as one line `error: ...` (exit code 2)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: ...)' except for the per-device defaults, whose help text already says them."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def per_device(key):
    return f"(default: {DEVICE_DEFAULTS['cuda'][key]} on cuda, {DEVICE_DEFAULTS['cpu'][key]} on cpu)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=HelpFormatter)
    parser.add_argument("--model", choices=CHOICES["model"], help=f"model size {per_device('model')}")
    parser.add_argument("--arch", default="gpt2", choices=CHOICES["arch"],
                        help="architecture preset (model.ARCHS): FLOPs and MFU follow it")
    parser.add_argument("--n-layer", type=int, help="override the preset's number of layers")
    parser.add_argument("--n-head", type=int, help="override the preset's number of heads")
    parser.add_argument("--n-embd", type=int, help="override the preset's embedding width")
    parser.add_argument("--vocab-size", type=int, help=f"embedding rows (default: {PADDED_VOCAB_SIZE} for GPT-2 "
                                                          f"presets, {TINY['vocab_size']} for tiny)")
    parser.add_argument("--batch-size", type=int, help=f"sequences per micro-step {per_device('batch_size')}")
    parser.add_argument("--seq-len", type=int, help=f"tokens per sequence {per_device('seq_len')}")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--steps", type=int, help=f"timed steps {per_device('steps')}; with --plan: optimizer "
                                                      "steps of --total-batch-size tokens")
    parser.add_argument("--warmup", type=int, help=f"untimed steps first, compile included {per_device('warmup')}")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help=f"torch.compile the model "
                                                                                 f"{per_device('compile')}")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (train_gpt2.py: "
                                                                      "inductor; aot_eager needs no C++ compiler)")
    parser.add_argument("--compile-mode", default="default", choices=CHOICES["compile_mode"],
                        help="torch.compile mode (train_gpt2.py: default), to try what else might pay")
    parser.add_argument("--dtype", choices=CHOICES["dtype"], help="autocast dtype; fp16 adds a GradScaler (default: "
                        "bf16 on GPUs with native bf16, compute capability >= 8.0; fp16 on older GPUs; fp32 on cpu)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--compare", action="store_true", help="time the main variants against the default "
                                                               "fast path, alternating, in one process")
    parser.add_argument("--rounds", type=int, default=5, help="with --compare: timed rounds per variant, "
                                                              "each --steps/--rounds steps, in rotating order")
    parser.add_argument("--profile", action="store_true", help="after timing, profile a few steps with "
                                                               "torch.profiler and print the top kernels")
    parser.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler")
    parser.add_argument("--trace", help="with --profile: also write a Chrome trace to this file")
    parser.add_argument("--write-shards", metavar="DIR", help="instead of timing, write random-token shards for "
                                                                 "--warmup + --steps steps to DIR and print the "
                                                                 "train_gpt2.py command that runs this config on them")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute each block's "
                                                                            "activations in backward (memory.py)")
    parser.add_argument("--memory", action="store_true", help="print the memory model instead of timing: bytes per "
                        "rank for DDP / sharded states / FSDP, with and without activation checkpointing, the "
                        "largest micro-batch that fits --gpu-mem, and a verdict (default model gpt2, B=1, T=1024)")
    parser.add_argument("--world-size", type=int, default=8, help="with --memory: GPUs the states are sharded over")
    parser.add_argument("--gpu-mem", type=float, default=24.0, help="with --memory: GiB of memory per GPU")
    parser.add_argument("--plan", action="store_true", help="print time and money of a training run before renting: "
                        "what fits --gpu, the hours at an MFU, the dollars at --price (arithmetic, not measured)")
    parser.add_argument("--tokens", type=float, help="with --plan: tokens to train on, e.g. 10e9 (or give --steps)")
    parser.add_argument("--total-batch-size", type=int, default=524288, help="with --plan: tokens per optimizer "
                                                                             "step, as train_gpt2.py's flag")
    parser.add_argument("--gpu", help=f"with --plan: GPU type, one of {', '.join(GPU_TYPES)}")
    parser.add_argument("--gpus", type=int, default=1, help="with --plan: number of GPUs")
    parser.add_argument("--price", type=float, help="with --plan: USD per GPU-hour, for the cost")
    parser.add_argument("--mfu", type=float, help="with --plan: model FLOPs utilization to assume, 0-1 (default: "
                        f"measured in docs/speed.md for that GPU, else {DEFAULT_MFU})")
    parser.add_argument("--seed", type=int, default=1337, help="seed for the weights and the random tokens")
    return parser.parse_args(argv)


def resolve_args(args):
    """Fill the per-device defaults and reject what cannot run, with a sentence a user can act on."""
    if args.plan:  # arithmetic only: no device involved
        return resolve_plan_args(args)
    plan_only = [flag for flag in ("gpu", "tokens", "price", "mfu") if getattr(args, flag) is not None]
    if plan_only:
        raise ValueError(f"--{plan_only[0]} goes with --plan: add --plan, or drop it")
    if args.memory:  # arithmetic only: no device involved
        for key, value in dict(model="gpt2", batch_size=1, seq_len=1024, dtype="bf16").items():
            setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
        if args.world_size < 1 or args.gpu_mem <= 0 or args.batch_size < 1:
            raise ValueError("--world-size and --batch-size must be at least 1 and --gpu-mem positive")
        args.config = build_config(args)
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = args.device.split(":")[0]
    if device_type not in DEVICE_DEFAULTS:
        raise ValueError(f"--device {args.device} is not supported: use cuda, cuda:N or cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} asked for, but torch sees no CUDA GPU: use --device cpu")
    if args.device == "cuda":
        args.device = f"cuda:{torch.cuda.current_device()}"  # an index, which torch.cuda.set_device needs
    # bf16 where the GPU has it natively (compute capability >= 8.0), else fp16 with a GradScaler, as train_gpt2.py
    args.dtype = pick_dtype(args.dtype or "auto", args.device)
    for key, value in DEVICE_DEFAULTS[device_type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("batch_size", "seq_len", "grad_accum", "steps", "rounds", "profile_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.compare and args.steps < args.rounds:
        raise ValueError(f"--compare needs --steps >= --rounds ({args.rounds}), got --steps {args.steps}")
    if args.write_shards and (args.compare or args.profile):
        raise ValueError("--write-shards only writes shards: run it without --compare and --profile")
    if args.compare and args.profile:
        raise ValueError("--profile looks at one path: run it without --compare")
    if args.trace and not args.profile:
        raise ValueError("--trace needs --profile")
    compiles = args.compile or args.compare  # the lookup imports torch._dynamo: seconds, so only when needed
    if compiles and args.compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ValueError(f"--compile-backend {args.compile_backend} is not a torch.compile backend: use inductor, "
                         f"or aot_eager where there is no C++ compiler")
    args.device_type = device_type
    args.config = build_config(args)
    return args


def make_args(**flags):
    """What `python bench.py FLAGS` resolves to, with the flags as keywords (dashes as underscores, a switch as
    True/False): make_args(model="tiny", batch_size=2, compile=False) is `--model tiny --batch-size 2 --no-compile`.
    For scripts that build many configurations (dev/bench_suite.py), so they need not write argv strings."""
    args = parse_args([])
    unknown = sorted(set(flags) - set(vars(args)))
    if unknown:
        raise TypeError(f"bench.py has no flag for {', '.join(unknown)}")
    for key, value in flags.items():
        if key in CHOICES and value is not None and value not in CHOICES[key]:
            raise ValueError(f"--{key.replace('_', '-')} {value} is not one of {', '.join(CHOICES[key])}")
    vars(args).update(flags)
    return resolve_args(args)


def build_config(args):
    sizes = dict(TINY) if args.model == "tiny" else {**PRESETS[args.model], "vocab_size": PADDED_VOCAB_SIZE}
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    for key, value in sizes.items():
        if value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if sizes["n_embd"] % sizes["n_head"]:
        raise ValueError(f"n_embd {sizes['n_embd']} is not divisible by n_head {sizes['n_head']}")
    # block_size 1024 as in train_gpt2.py, so a seed gives the same weights; the sizes replace the preset's
    config = GPTConfig.preset("gpt2", arch=args.arch, **sizes)
    if args.seq_len > config.block_size:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's block_size {config.block_size}")
    return config


# -----------------------------------------------------------------------------
# data: random tokens, handed over and moved to the device the way train_gpt2.py's loader does it


class RandomBatches:
    """Stands in for train_gpt2.py's ShardLoader: next_batch() gives (B, T+1) int64 rows on the host, converted
    from uint16 tokens as the shard loader converts them. The rows cycle through a small pool of random ones."""

    def __init__(self, batch_size, seq_len, vocab_size, seed=0, pool_size=8):
        rng = np.random.default_rng(seed)
        self.pool = [rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.uint16)
                     for _ in range(pool_size)]
        self.index = 0

    def next_batch(self):
        rows = self.pool[self.index % len(self.pool)]
        self.index += 1
        return torch.from_numpy(rows.astype(np.int64))


# -----------------------------------------------------------------------------
# explicit attention: model.py's own attention with the (B, nh, T, T) scores written out, for "flash vs explicit"


def use_explicit_attention(model):
    """Switch this model instance (only) to model.py's explicit attention path (CausalSelfAttention.keep_attention):
    scores, causal mask and softmax written out, after the same QK-norm and RoPE, pruned heads included. So the
    comparison times one function computed two ways, for every --arch; other instances are untouched."""
    for block in model.transformer.h:
        block.attn.keep_attention = True
        block.attn.register_forward_hook(drop_kept_attention)
    return model


def drop_kept_attention(attn, inputs, output):
    """The explicit path also keeps its softmax weights in attn.attention, for heads.py. Autograd holds its own
    reference for backward, so we drop ours after each forward: otherwise n_layer (B, nh, T, T) tensors would live
    on between steps, and --compare would count them as resident memory rather than as the variant's."""
    attn.attention = None


# -----------------------------------------------------------------------------
# the training step


def make_train_step(args, compile=None, fused=None, attention="flash", batches=None, lr=LEARNING_RATE, loss=None):
    """Build a model and optimizer; return (step, raw_model, optimizer). step() runs one optimizer step as
    train_gpt2.py's loop does and returns its loss and gradient norm (before clipping). compile=None means
    args.compile; fused=None is configure_optimizers' default (fused on CUDA); batches defaults to random tokens;
    loss=None is train_gpt2.py's choice here (default_loss), "chunked" or "plain" the other."""
    compile = args.compile if compile is None else compile
    device, device_type = args.device, args.device_type
    torch.manual_seed(args.seed)
    raw_model = GPT(args.config).to(device)
    if attention == "explicit":
        use_explicit_attention(raw_model)
    if args.activation_checkpointing:
        memory.checkpoint_blocks(raw_model)
    model = torch.compile(raw_model, backend=args.compile_backend, mode=args.compile_mode) if compile else raw_model
    optimizer = raw_model.configure_optimizers(WEIGHT_DECAY, lr, device_type, fused=fused)
    scaler = torch.amp.GradScaler("cuda") if args.dtype == "fp16" else None
    autocast = hardware.autocast(args.dtype, device)
    if batches is None:
        batches = RandomBatches(args.batch_size, args.seq_len, args.config.vocab_size, args.seed)
    grad_accum_steps = args.grad_accum

    # train_gpt2.py's step: its micro-step (forward_backward) and its loss chunks, around them what its loop does
    # in one process on random tokens (no DDP all-reduce, a constant lr, no spike test, no log line)
    loss_chunk = chunked_loss_rows(args.config.vocab_size) if (loss or default_loss(args)) == "chunked" else 0
    prefetched = [to_device(batches.next_batch(), device)]

    def step():
        batch = prefetched.pop()
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = batch
            # prefetch the next micro-batch, the next step's first one too: host work and copy overlap the GPU work
            batch = to_device(batches.next_batch(), device)
            loss_accum += forward_backward(model, x, y, autocast, loss_chunk, grad_accum_steps, scaler)  # on device
        stats = torch.stack([loss_accum, torch.full_like(loss_accum, 0.0)])  # loss and stop vote, built as there
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), GRAD_CLIP)
        train_loss, _, norm = torch.stack([stats[0], stats[1], norm.float()]).tolist()  # host sync: read the loss
        # a non-finite loss or gradient must not reach the weights (with fp16 the GradScaler skips inf gradients)
        if math.isfinite(train_loss) and (scaler is not None or math.isfinite(norm)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        prefetched.append(batch)
        if device_type == "cuda":
            torch.cuda.synchronize()  # each step timed on its own (train_gpt2.py does not sync here)
        return train_loss, norm

    return step, raw_model, optimizer


# -----------------------------------------------------------------------------
# timing and memory


def synchronize(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def warm_up(step, n, device_type):
    """Run the untimed steps (the first one compiles) and return how long they took."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    synchronize(device_type)
    return time.perf_counter() - t0


def time_steps(step, n, device_type):
    """Seconds for each of n steps. A step ends in torch.cuda.synchronize (as train_gpt2.py's does), and we
    synchronize around each one as well, so every interval covers the GPU work of exactly that step."""
    times = []
    synchronize(device_type)
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        synchronize(device_type)
        times.append(time.perf_counter() - t0)
    return times


def reset_peak_memory(device_type):
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device_type):
    """(bytes, label). On CUDA the caching allocator's peak since the last reset. A CPU has no such counter, so
    there it is the process's peak resident set size, which also holds Python, torch and any compiler."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024), "process peak RSS, CPU"


def device_name(args):
    return torch.cuda.get_device_name(args.device) if args.device_type == "cuda" else "cpu"


def tokens_per_step(args):
    return args.batch_size * args.seq_len * args.grad_accum


def figures(args, step_times):
    """ms/step, tokens/s and MFU from the median step time: robust to the odd slow step."""
    ms = 1000 * statistics.median(step_times)
    tokens_per_sec = tokens_per_step(args) / (ms / 1000)
    mfu = estimate_mfu(tokens_per_sec, flops_per_token(args.config, args.seq_len), device_name(args))
    return ms, tokens_per_sec, mfu


def default_loss(args):
    """The training loss train_gpt2.py takes here: "chunked" (no whole logits; CUDA in bf16/fp32) or "plain"."""
    return "chunked" if loss_chunk_rows(args.config.vocab_size, args.device_type, args.dtype) else "plain"


def describe(args, compile, fused, attention, loss=None):
    """A path in words, e.g. 'compiled (inductor), AdamW fused, flash attention, chunked loss'."""
    how = args.compile_backend + ("" if args.compile_mode == "default" else f", {args.compile_mode}")
    compiled = f"compiled ({how})" if compile else "eager"
    unfused = "foreach" if args.device_type == "cuda" else "for-loop"  # torch's default when not fused
    loss = loss or default_loss(args)
    return f"{compiled}, AdamW {'fused' if fused else unfused}, {attention} attention, {loss} loss"


# -----------------------------------------------------------------------------
# one measurement


def print_header(args):
    c = args.config
    n_threads = torch.get_num_threads()
    threads = f" ({n_threads} thread{'s' if n_threads > 1 else ''})" if args.device_type == "cpu" else ""
    print(f"device: {device_name(args)}{threads} | torch {torch.__version__} | {date.today().isoformat()}")
    with torch.device("meta"):  # counts only: no memory, no init
        n_params = GPT(c).num_params()
    note = " (a smoke-test model, not GPT-2)" if args.model == "tiny" else ""
    mlp_width = c.mlp_hidden or 4 * c.n_embd  # 0 means GPT-2's 4 * n_embd
    print(f"model: {args.model}{note} | arch {args.arch} ({c.mlp} MLP of width {mlp_width}) | n_layer={c.n_layer} "
          f"n_head={c.n_head} n_embd={c.n_embd} vocab_size={c.vocab_size} | {n_params:,} parameters")
    print(f"batch: B={args.batch_size} T={args.seq_len} grad_accum={args.grad_accum} | "
          f"{tokens_per_step(args):,} tokens/step | dtype {args.dtype}")
    print(f"flops/token: {flops_per_token(c, args.seq_len):.4g} (6*N + 6*n_layer*n_embd*T, model.flops_per_token)")


def run_single(args):
    step, _, optimizer = make_train_step(args)
    print(f"path: {describe(args, args.compile, optimizer.defaults.get('fused'), 'flash')}")
    warmup_steps = max(args.warmup, 1) if args.compile else args.warmup  # compiling in the timed steps: never
    try:
        warmup_s = warm_up(step, warmup_steps, args.device_type)
    except torch.cuda.OutOfMemoryError:
        raise BenchError(f"out of GPU memory at --batch-size {args.batch_size}: lower it and raise --grad-accum "
                         f"to keep the tokens per step") from None
    except Exception as e:
        if not args.compile:
            raise
        raise BenchError(f"the compiled model does not run here ({first_line(e)}): try --no-compile, or "
                         f"--compile-backend aot_eager where there is no C++ compiler") from None
    print(f"warm-up: {warmup_steps} steps in {warmup_s:.2f} s (compile included, excluded from the figures)")
    reset_peak_memory(args.device_type)
    times = time_steps(step, args.steps, args.device_type)
    ms, tokens_per_sec, mfu = figures(args, times)
    memory, memory_label = peak_memory(args.device_type)
    print(f"timed: {args.steps} steps | ms/step: {ms:.2f} median (min {1000 * min(times):.2f}, "
          f"max {1000 * max(times):.2f})")
    print(f"tokens/s: {tokens_per_sec:,.0f}")
    mfu_note = "no peak FLOP/s known for this device" if mfu is None else "of the dense 16-bit peak"
    print(f"MFU: {format_mfu(mfu)} ({mfu_note}; {FLOPS_CONVENTION})")
    print(f"peak memory: {memory / 2**20:,.1f} MiB ({memory_label})")
    if args.profile:
        run_profile(args, step)


# -----------------------------------------------------------------------------
# variants, back to back


def first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120]}" if text else type(error).__name__


def compare_settings(args):
    """The default fast path for this device first, then variants that each change one thing."""
    fused_default = args.device_type == "cuda"  # configure_optimizers' default, which train_gpt2.py uses
    baseline = dict(compile=args.compile, fused=fused_default, attention="flash", loss=default_loss(args))
    other_loss = "plain" if baseline["loss"] == "chunked" else "chunked"  # is the chunked loss worth its graph break?
    return [baseline, {**baseline, "compile": not args.compile}, {**baseline, "fused": not fused_default},
            {**baseline, "attention": "explicit"}, {**baseline, "loss": other_loss}]


def try_run(failures, name, function, *function_args, **function_kwargs):
    """function(*function_args, **function_kwargs), or None with the reason in failures[name]: a variant that
    cannot run here (no C++ compiler, out of memory) becomes a table row that says so, not a crash."""
    try:
        return function(*function_args, **function_kwargs)
    except Exception as e:
        failures[name] = f"unavailable: {first_line(e)}"
        return None


@dataclasses.dataclass
class Comparison:
    """What run_compare measured, per variant named by describe() (the baseline first). A variant in failures
    has no figures: it could not be built, warmed up or timed here."""
    names: list
    round_times: dict  # name -> per round, the seconds of each of its steps
    step_memory: dict  # name -> bytes (CUDA): peak allocated during its steps above what was allocated before them
    warmup_s: dict  # name -> seconds of its warm-up steps, compile included
    failures: dict  # name -> "unavailable: <reason>"
    warmup_steps: int
    steps_per_round: int

    def ratios(self, name):
        """Per round, the variant's tokens/s over the baseline's: the baseline's median step time over its own."""
        baseline_rounds = self.round_times[self.names[0]]
        return [statistics.median(base) / statistics.median(own)
                for base, own in zip(baseline_rounds, self.round_times[name])]


def run_compare(args):
    """Time the variants in one process: all warmed up first, then --rounds rounds in interleaved, rotating
    order (A B C D, B C D A, ...) so drift on a shared machine hits them alike. Returns a Comparison, which
    print_compare_table prints (dev/bench_suite.py reports it its own way)."""
    settings = compare_settings(args)
    names = [describe(args, **s) for s in settings]
    warmup_steps = max(args.warmup, 1)  # at least one: it is where compile happens and failures show up
    steps, warmup_s, failures = {}, {}, {}
    for name, setting in zip(names, settings):
        built = try_run(failures, name, make_train_step, args, **setting)
        if built is not None:
            warmup_s[name] = try_run(failures, name, warm_up, built[0], warmup_steps, args.device_type)
            if name not in failures:
                steps[name] = built[0]
        del built  # a failed variant's model and optimizer go now, so the others have the memory
        free_device_memory(args.device_type)

    steps_per_round = args.steps // args.rounds
    round_times = {name: [] for name in names}
    step_memory = {name: 0 for name in names}
    for r in range(args.rounds):
        running = [name for name in names if name in steps]
        for name in running[r % len(running):] + running[:r % len(running)]:
            reset_peak_memory(args.device_type)
            resident = torch.cuda.memory_allocated() if args.device_type == "cuda" else 0
            times = try_run(failures, name, time_steps, steps[name], steps_per_round, args.device_type)
            if times is None:
                del steps[name]
                free_device_memory(args.device_type)
                continue
            round_times[name].append(times)
            if args.device_type == "cuda":
                step_memory[name] = max(step_memory[name], torch.cuda.max_memory_allocated() - resident)
    del steps  # the variants' models and optimizers: free for whatever the caller runs next
    free_device_memory(args.device_type)
    if names[0] in failures:
        raise BenchError(f"the baseline ({names[0]}) cannot run here: {failures[names[0]]}")
    return Comparison(names, round_times, step_memory, warmup_s, failures, warmup_steps, steps_per_round)


def print_compare_table(args, comparison):
    """A ratio is the median over rounds of Comparison.ratios (min-max shown)."""
    c = comparison
    print(f"compare: warm-up {c.warmup_steps} steps each, then {args.rounds} rounds x {c.steps_per_round} steps, "
          f"interleaved; ratio = tokens/s over the baseline's, median over rounds (min-max)")
    cuda = args.device_type == "cuda"
    labels = [("baseline: " if i == 0 else "") + name for i, name in enumerate(c.names)]
    width = max(len(label) for label in labels)
    print(f"{'variant':<{width}} {'tokens/s':>12} {'ms/step':>9} {'ratio':>18} {'MFU':>8} {'warm-up s':>10}"
          + (f" {'step mem MiB':>13}" if cuda else ""))
    for name, label in zip(c.names, labels):
        if name in c.failures:
            print(f"{label:<{width}} {c.failures[name]}")
            continue
        ms, tokens_per_sec, mfu = figures(args, [t for times in c.round_times[name] for t in times])
        ratios = c.ratios(name)
        ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{label:<{width}} {tokens_per_sec:>12,.0f} {ms:>9.2f} {ratio:>18} {format_mfu(mfu):>8} "
              f"{c.warmup_s[name]:>10.2f}" + (f" {c.step_memory[name] / 2**20:>13,.0f}" if cuda else ""))
    if cuda:
        print("step mem: peak allocated during the variant's steps above what was allocated before them (the "
              "weights and optimizer states of all variants stay resident)")
    else:
        memory, memory_label = peak_memory(args.device_type)
        print(f"peak memory: {memory / 2**20:,.1f} MiB for the whole process ({memory_label}), not per variant")


def free_device_memory(device_type):
    if device_type == "cuda":
        torch.cuda.empty_cache()


# -----------------------------------------------------------------------------
# profile


def run_profile(args, step):
    """The top kernels over a few steps: self CUDA time on a GPU, self CPU time on a CPU."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device_type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            step()
        synchronize(args.device_type)
    sort_by = "self_cuda_time_total" if args.device_type == "cuda" else "self_cpu_time_total"
    print(f"profile: {args.profile_steps} steps, top kernels by {sort_by} (profiler overhead included)")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=25))
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace} (open in chrome://tracing or ui.perfetto.dev)")


# -----------------------------------------------------------------------------
# random-token shards, to check that train_gpt2.py's own step reaches bench.py's figure


def write_shards(args):
    """A val shard of one batch and a train shard for --warmup + --steps steps, in the shard contract's names and
    dtype, then the train_gpt2.py command for the same config, with everything but training turned off."""
    os.makedirs(args.write_shards, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    vocab = min(args.config.vocab_size, 50257)  # real token ids only, as a tokenizer would write them
    train_tokens = (args.warmup + args.steps) * tokens_per_step(args) + 1
    for name, n_tokens in (("edufineweb_val_000000.npy", args.batch_size * args.seq_len + 1),
                           ("edufineweb_train_000001.npy", train_tokens)):
        np.save(os.path.join(args.write_shards, name), rng.integers(0, vocab, n_tokens, dtype=np.uint16))
    c = args.config
    model = (f"--n-layer {c.n_layer} --n-head {c.n_head} --n-embd {c.n_embd}" if args.model == "tiny" else
             f"--model {args.model} --n-layer {c.n_layer} --n-head {c.n_head} --n-embd {c.n_embd}")
    print(f"wrote {train_tokens:,} train tokens to {args.write_shards}; now run, and take the median dt of the "
          f"steps after the first {args.warmup}:")
    print(f"python train_gpt2.py --data-dir {args.write_shards} --log-dir {os.path.join(args.write_shards, 'log')} "
          f"{model} --vocab-size {c.vocab_size} --batch-size {args.batch_size} --seq-len {args.seq_len} "
          f"--total-batch-size {tokens_per_step(args)} --max-steps {args.warmup + args.steps} --device {args.device} "
          f"--dtype {args.dtype} --{'' if args.compile else 'no-'}compile --eval-every 0 --hellaswag-every 0 "
          f"--sample-every 0 --checkpoint-every 0 --resume none")


# -----------------------------------------------------------------------------


def gib(n_bytes):
    return f"{n_bytes / 2**30:.2f}"


def run_memory_model(args):
    """The memory model's table: one row per strategy and activation checkpointing, bytes per rank."""
    c, W, gpu_bytes = args.config, args.world_size, args.gpu_mem * 2**30
    n_params = memory.parameter_counts(c)[0]
    print(f"memory model: {args.model} ({n_params:,} parameters), T={args.seq_len}, {args.dtype} autocast with fp32 "
          f"weights and AdamW states, {W} ranks of {args.gpu_mem:g} GiB ({gib(memory.usable_bytes(gpu_bytes))} GiB "
          f"usable: {gib(memory.RESERVED_BYTES)} GiB for the CUDA context, {memory.FRAGMENTATION:.0%} allocator "
          f"slack); GiB per rank, activations at B={args.batch_size}")
    print(f"| strategy | act. ckpt | weights | grads | optimizer | activations | buffers | total | max B | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for strategy in memory.STRATEGIES:
        for checkpointing in (False, True):
            e = memory.estimate(c, strategy, W, args.batch_size, args.seq_len, args.dtype, checkpointing)
            largest = memory.largest_micro_batch(c, strategy, W, args.seq_len, gpu_bytes, args.dtype, checkpointing)
            states = e.weights + e.grads + e.optimizer + e.buffers
            if largest == 0:
                verdict = f"does not fit: {gib(states)} GiB before any activation" if states > memory.usable_bytes(
                    gpu_bytes) else "does not fit one row"
            else:
                verdict = f"fits B <= {largest}" + ("" if largest >= args.batch_size else f", not B={args.batch_size}")
            print(f"| {memory.strategy_name(strategy)} | {'on' if checkpointing else 'off'} | {gib(e.weights)} | "
                  f"{gib(e.grads)} | {gib(e.optimizer)} | {gib(e.activations)} | {gib(e.buffers)} | {gib(e.total)} | "
                  f"{largest} | {verdict} |")
    print("buffers: DDP's gradient buckets (a second copy of the gradients), FSDP's gathered weights (the root's "
          "and two blocks') and unsharded block gradients; activations: memory.activation_bytes (saved for "
          "backward; the CUDA loss's chunk workspace, or under fp16 the plain loss's fp32 logits and their gradient; "
          "one recomputed block with checkpointing)")


# -----------------------------------------------------------------------------
# --plan: time and money of a run before renting, from the memory model, model.flops_per_token and an MFU


def resolve_plan_args(args):
    """Check --plan's flags and fill its defaults: the model (gpt2), T (1024), the GPU type, the tokens."""
    if args.memory:
        raise ValueError("--plan and --memory are two reports: pass one of them")
    if args.batch_size is not None:
        raise ValueError("--plan picks the micro-batch from the memory model: drop --batch-size")
    if args.gpu is None:
        raise ValueError(f"--plan needs --gpu, one of {', '.join(GPU_TYPES)}")
    if args.gpu.lower() not in GPU_TYPES:
        raise ValueError(f"--gpu {args.gpu} is not known: use one of {', '.join(GPU_TYPES)}")
    args.gpu = args.gpu.lower()
    if (args.tokens is None) == (args.steps is None):
        raise ValueError("--plan needs --tokens (e.g. 10e9) or --steps, one of them")
    if args.gpus < 1 or args.total_batch_size < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--gpus, --total-batch-size and --steps must be at least 1")
    if args.tokens is not None and args.tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {args.tokens:g}")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu is a fraction of the peak, between 0 and 1: got {args.mfu:g}")
    if args.price is not None and args.price < 0:
        raise ValueError(f"--price must be 0 or more, got {args.price:g}")
    args.model = args.model or "gpt2"
    if args.model == "tiny":
        raise ValueError("--plan is for GPT-2 sizes: use --model gpt2, gpt2-medium, gpt2-large or gpt2-xl")
    args.seq_len = args.seq_len or 1024
    args.dtype = args.dtype or GPU_TYPES[args.gpu]["dtype"]
    args.config = build_config(args)
    tokens_per_rank_row = args.seq_len * args.gpus
    if args.total_batch_size % tokens_per_rank_row:
        raise ValueError(f"--total-batch-size {args.total_batch_size} is not a multiple of seq-len x gpus = "
                         f"{args.seq_len} x {args.gpus}, as train_gpt2.py needs")
    return args


@dataclasses.dataclass
class Fit:
    """The simplest way the memory model says a step fits: strategy, checkpointing, micro-batch, accumulation."""
    strategy: str  # memory.STRATEGIES: ddp, zero, fsdp
    activation_checkpointing: bool
    batch_size: int  # B: a divisor of the rows per rank, so the total batch stays the flag's
    largest: int  # the memory model's largest B, before rounding down to a divisor
    grad_accum: int


def strategies_to_try(gpus, dtype):
    """DDP, then ZeRO-1, then FSDP2, each without then with activation checkpointing; one GPU has nothing to
    shard, and memory.pick_strategy refuses FSDP2 in fp16."""
    tried = []
    for strategy in memory.STRATEGIES:
        try:
            picked = memory.pick_strategy(strategy == "fsdp", strategy == "zero", dtype, gpus)
        except ValueError:
            continue
        if picked != strategy:
            continue
        tried += [(strategy, False), (strategy, True)]
    return tried


def fit_step(config, gpus, seq_len, total_batch_size, gpu_bytes, dtype):
    """The first of strategies_to_try where a micro-batch of at least 1 row fits, as a Fit; None when none does."""
    rows_per_rank = total_batch_size // (seq_len * gpus)
    for strategy, checkpointing in strategies_to_try(gpus, dtype):
        largest = memory.largest_micro_batch(config, strategy, gpus, seq_len, gpu_bytes, dtype, checkpointing)
        if largest == 0:
            continue
        batch_size = memory.divisors_descending(rows_per_rank, largest)[0]
        return Fit(strategy, checkpointing, batch_size, largest, rows_per_rank // batch_size)
    return None


def measured_mfu(gpu_name, path=None):
    """(MFU, the row's device and date) from docs/speed.md's "Measured throughput" table, the last row whose device
    is this GPU (by hardware.device_key) and has an MFU; None when there is none."""
    path = path or SPEED_DOC
    if not os.path.exists(path):
        return None
    lines = open(path).read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("### Measured throughput")]
    if not starts:
        return None
    found = None
    for line in lines[starts[0] + 1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 7 or hardware.device_key(cells[0]) != gpu_name:
            continue
        mfu_text = cells[6].rstrip("%")
        try:
            found = (float(mfu_text) / 100, f"{cells[0]}, {cells[1]}")
        except ValueError:
            continue
    return found


def pick_mfu(args, gpu_name):
    """(MFU, its source, whether it is an assumption): --mfu, else a measured one, else DEFAULT_MFU."""
    if args.mfu is not None:
        return args.mfu, "given (--mfu)", False
    measured = measured_mfu(gpu_name)
    if measured is not None:
        mfu, row = measured
        return mfu, f"measured on this repository (docs/speed.md: {row}; GPT-2 124M, T=1024, one GPU)", False
    return DEFAULT_MFU, DEFAULT_MFU_SOURCE, True


def training_hours(tokens, flops_per_tok, gpus, peak, mfu):
    return tokens * flops_per_tok / (gpus * peak * mfu) / 3600


@dataclasses.dataclass
class Plan:
    """What --plan prints: the run, the GPU, what fits, the time and the cost."""
    args: argparse.Namespace
    gpu_name: str  # hardware.PEAK_FLOPS's name
    peak: float  # FLOP/s per GPU
    gpu_bytes: int
    tokens: float
    steps: int
    flops_per_tok: int
    fit: Fit  # None: nothing fits
    mfu: float
    mfu_source: str
    mfu_assumed: bool
    hours: float
    dollars: float  # None without --price


def plan_run(args):
    gpu = GPU_TYPES[args.gpu]
    peak = hardware.PEAK_FLOPS[gpu["name"]]
    gpu_bytes = gpu["memory_gb"] * 2**30
    tokens = args.tokens if args.steps is None else args.steps * args.total_batch_size
    steps = math.ceil(tokens / args.total_batch_size)
    flops_per_tok = flops_per_token(args.config, args.seq_len)
    fit = fit_step(args.config, args.gpus, args.seq_len, args.total_batch_size, gpu_bytes, args.dtype)
    mfu, mfu_source, mfu_assumed = pick_mfu(args, gpu["name"])
    hours = training_hours(tokens, flops_per_tok, args.gpus, peak, mfu)
    dollars = None if args.price is None else hours * args.gpus * args.price
    return Plan(args, gpu["name"], peak, gpu_bytes, tokens, steps, flops_per_tok, fit, mfu, mfu_source, mfu_assumed,
                hours, dollars)


def describe_fit(plan):
    fit, args = plan.fit, plan.args
    if fit is None:
        strategy, _ = strategies_to_try(args.gpus, args.dtype)[-1]
        return (f"nothing fits: not even {memory.strategy_name(strategy)} with activation checkpointing at B=1 "
                f"({gib(memory.usable_bytes(plan.gpu_bytes))} GiB usable per GPU): use more or larger GPUs")
    strategy = "one GPU, no sharding" if args.gpus == 1 else memory.strategy_name(fit.strategy)
    checkpointing = "with" if fit.activation_checkpointing else "without"
    return (f"{strategy}, {checkpointing} activation checkpointing: B={fit.batch_size} (memory model's largest "
            f"{fit.largest}) x grad accum {fit.grad_accum}")


def train_command(plan):
    """The train_gpt2.py command the plan describes."""
    args, fit = plan.args, plan.fit
    launcher = "python" if args.gpus == 1 else f"torchrun --standalone --nproc_per_node={args.gpus}"
    flags = [f"--model {args.model}"]
    if args.arch != "gpt2":
        flags.append(f"--arch {args.arch}")
    flags += [f"--batch-size {fit.batch_size}", f"--total-batch-size {args.total_batch_size}",
              f"--max-steps {plan.steps}"]
    if args.seq_len != 1024:
        flags.append(f"--seq-len {args.seq_len}")
    if fit.strategy == "zero":
        flags.append("--shard-optimizer")
    if fit.strategy == "fsdp":
        flags.append("--fsdp")
    if fit.activation_checkpointing:
        flags.append("--activation-checkpointing")
    return f"{launcher} train_gpt2.py {' '.join(flags)}"


def describe_peak(plan):
    peak = f"{plan.peak / 1e12:g} TFLOP/s dense {plan.args.dtype} per GPU (hardware.PEAK_FLOPS[{plan.gpu_name!r}])"
    if plan.args.gpu not in FP16_ACCUMULATE_PEAK:
        return peak
    fp16_accumulate, source = FP16_ACCUMULATE_PEAK[plan.args.gpu]
    return (f"{peak}: the fp32-accumulate rate, half of the {fp16_accumulate / 1e12:g} with fp16 accumulation "
            f"({source}); training accumulates in fp32")


def plan_rows(plan):
    """(item, value) rows of the plan's table."""
    args = plan.args
    n_params = memory.parameter_counts(args.config)[0]
    rows = [("model", f"{args.model}, arch {args.arch}: {n_params:,} parameters, T={args.seq_len}"),
            ("tokens", f"{plan.tokens:,.0f} = {plan.steps:,} steps of {args.total_batch_size:,} tokens"),
            ("GPUs", f"{args.gpus} x {args.gpu} ({plan.gpu_bytes / 2**30:g} GiB each, datasheet)"),
            ("peak", describe_peak(plan)),
            ("fits", describe_fit(plan))]
    if plan.fit is not None:
        rows.append(("command", train_command(plan)))
    rows += [("FLOPs/token", f"{plan.flops_per_tok:,} (6*N + 6*n_layer*n_embd*T, model.flops_per_token)"),
             ("MFU", f"{plan.mfu:.2f} ({plan.mfu_source})"),
             ("time", f"{plan.hours:,.2f} hours = tokens x FLOPs/token / ({args.gpus} x peak x MFU)"),
             ("GPU-hours", f"{plan.hours * args.gpus:,.1f}")]
    if plan.dollars is None:
        rows.append(("cost", "give --price, USD per GPU-hour"))
    else:
        rows.append(("cost", f"${plan.dollars:,.2f} at ${args.price:g} per GPU-hour"))
    return rows


def print_plan(plan):
    print("plan: computed from the memory model, model.flops_per_token and an MFU; nothing here is measured")
    print("| item | value |")
    print("|---|---|")
    for item, value in plan_rows(plan):
        print(f"| {item} | {value} |")
    if plan.mfu_assumed:
        print(f"warning: MFU {plan.mfu:.2f} is an assumption, not a measurement: no GPU of this type has a row in "
              f"docs/speed.md's measured table; the time and cost scale with 1/MFU (--mfu to set it)")
    if plan.fit is not None and plan.fit.activation_checkpointing:
        print("warning: activation checkpointing recomputes each block's forward, about a third more FLOPs than "
              "counted here, so expect a lower MFU and up to ~1.3x the time")


def main(argv=None):
    args = resolve_args(parse_args(argv))
    if args.plan:
        print_plan(plan_run(args))
        return
    if args.memory:
        run_memory_model(args)
        return
    if args.device_type == "cuda":
        torch.cuda.set_device(args.device)  # so the memory counters and the profiler look at this GPU
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer, as train_gpt2.py
    if args.write_shards:
        write_shards(args)
        return
    print_header(args)
    if args.compare:
        print_compare_table(args, run_compare(args))
    else:
        run_single(args)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
