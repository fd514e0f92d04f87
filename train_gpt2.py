"""
Train GPT-2 on FineWeb-Edu token shards. One file, top to bottom: arguments, the shard loader, the helpers
of the loop, then main(): distributed setup, model, resume, and the training loop with periodic validation,
HellaSwag, samples and checkpoints.

    python train_gpt2.py                                    # 1 GPU: gradient accumulation makes up the batch
    torchrun --standalone --nproc_per_node=8 train_gpt2.py  # one 8-GPU node
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=N --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:PORT --max-restarts=3 train_gpt2.py   # on each node (README: why the variable)
    python fineweb.py --demo && python train_gpt2.py --demo # a small model on a laptop CPU, a few minutes

Data order. A shard of n tokens holds (n-1)//T windows of T+1 tokens at stride T. Epoch e visits the train
shards in permutation(n_shards, seed, e), and the windows of shard k in permutation(n_windows, seed, e, k), a
shuffle this file defines (no library version can change it); the epochs follow one another as one endless
stream of windows. Step s trains on windows [s*W, (s+1)*W) of that stream (W = total_batch_size / T), and
micro-batch j = micro_step * world_size + rank is the j-th run of B windows in it. A step's data therefore
depends on neither the world size nor the accumulation split, and the loader's whole state is one number, the
stream position.

Checkpoints. log/model_{step:05d}.pt is the state after `step` optimizer steps: checkpoint["step"] is the next
step to run, and the "{step} val" line of log.txt was measured on the same weights. It is written to a
temporary file and renamed, so a crash at any moment leaves complete checkpoints only. --resume auto continues
from the newest one, bit-exact on CPU: the losses after resuming are those of a run never interrupted.

Signals. SIGTERM or Ctrl-C (SIGINT) lets the current step finish, writes a checkpoint of it, and exits with
128 + the signal number (143, 130), which tells a wrapper the run is not finished. A second signal acts at once.
"""

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import re
import signal
import statistics
import sys
import time
from collections import deque

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import fineweb
import hardware
import hellaswag
import memory
from checkpoint import (ResumeError, check_resume_args, find_checkpoints, load_resume_checkpoint, resolve_resume,
                        rng_state, save_checkpoint, set_rng_state)
from distributed import destroy_process_group, init_process_group
from hardware import estimate_mfu, peak_flops
from model import ARCH_FIELDS, ARCHS, CHOICES, FLOPS_CONVENTION, GPT, PRESETS, GPTConfig, flops_per_token
from runlog import HELLASWAG_SCORES, RunLog

# -----------------------------------------------------------------------------
# arguments: every default in one place

# --demo: a small model on the `python fineweb.py --demo` shards (Python's stdlib source); flags still override
DEFAULT_BATCH_SIZE = 64  # rows per micro-step; also what --batch-size auto takes where there is no GPU to probe
DEMO_PRESET = dict(data_dir="demo_shards", log_dir="log/demo", n_layer=4, n_head=4, n_embd=64, batch_size=8,
                   seq_len=64, total_batch_size=512, max_lr=3e-3, min_lr=3e-4, warmup_steps=20, max_steps=150,
                   eval_every=50, val_tokens=8192, hellaswag_every=0, sample_every=50, checkpoint_every=150)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train GPT-2 on FineWeb-Edu shards (1 GPU, torchrun, CPU or MPS).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--data-dir", default="edu_fineweb10B", help="directory of *train*/*val* shards (.npy or llm.c .bin)")
    add("--log-dir", default="log", help="log.txt and checkpoints go here")
    add("--model", default="gpt2", choices=list(PRESETS), help="GPT-2 size")
    for flag in ("--n-layer", "--n-head", "--n-embd"):
        add(flag, type=int, default=None, help="overrides the --model preset (None: the preset's)")
    add("--vocab-size", type=int, default=50304, help="GPT-2's 50257 padded to a multiple of 128, for speed")
    add("--arch", default="gpt2", choices=list(ARCHS), help="architecture preset (model.py's map); the flags "
        "below override single fields of it, for ablations")
    for field in ARCH_FIELDS:  # None: the --arch preset's value
        kind = dict(choices=CHOICES[field]) if field in CHOICES else dict(type=float) if field == "rope_base" else \
            dict(type=int) if field == "mlp_hidden" else dict(action=argparse.BooleanOptionalAction)
        add("--" + field.replace("_", "-"), default=None, help=f"GPTConfig.{field} (None: the --arch preset's)", **kind)
    add("--optimizer", default="adamw", choices=["adamw", "muon"], help="muon: Muon (muon.py) for the blocks' "
        "matrices, AdamW for embeddings, head and 1-D parameters, both at --max-lr and --weight-decay")
    add("--schedule", default="cosine", choices=["cosine", "wsd"], help="after the warmup: cosine decay to --min-lr, "
        "or warmup-stable-decay: --max-lr until the last --decay-frac of the steps, then linear to --min-lr")
    add("--decay-frac", type=float, default=0.2, help="wsd: the fraction of --max-steps spent decaying")
    add("--batch-size", type=batch_size_arg, default=DEFAULT_BATCH_SIZE, help="micro-batch rows per GPU (B), or "
        "'auto': the largest that fits this GPU and divides the rows per rank and step (elsewhere: the default, or "
        "its largest divisor)")
    add("--seq-len", type=int, default=1024, help="tokens per row (T)")
    add("--total-batch-size", type=int, default=524288, help="tokens per optimizer step, over all GPUs (2**19)")
    add("--max-lr", type=float, default=6e-4, help="peak learning rate")
    add("--min-lr", type=float, default=6e-5, help="learning rate at the end of the cosine decay")
    add("--warmup-steps", type=int, default=715, help="linear warmup steps")
    add("--max-steps", type=int, default=19073, help="optimizer steps: 19073 x 2**19 tokens = 1 epoch of 10B")
    add("--epochs", type=int, default=0, help="if > 0, train this many passes over the train windows; "
        "--max-steps is then derived from the data (and the LR schedule with it)")
    add("--weight-decay", type=float, default=0.1, help="AdamW decay on >= 2-D parameters")
    add("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    add("--eval-every", type=int, default=250, help="steps between val losses (0: never)")
    add("--val-tokens", type=int, default=10485760, help="val tokens per evaluation, or all the val shards hold")
    add("--hellaswag-every", type=int, default=250, help="steps between HellaSwag evaluations (0: never)")
    add("--sample-every", type=int, default=250, help="steps between printed samples (0: never)")
    add("--sample-tokens", type=int, default=32, help="new tokens per sample")
    add("--checkpoint-every", type=int, default=5000, help="steps between checkpoints, plus one at the end (0: never)")
    add("--keep-checkpoints", type=int, default=0, help="keep only the newest K checkpoints (0: keep all)")
    add("--resume", default="auto", help="'auto': the newest checkpoint in --log-dir, if any; a path; or 'none'")
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (None: on CUDA only)")
    add("--shard-optimizer", action="store_true", help="ZeRO-1: shard the optimizer states over the ranks "
        "(torch.distributed.optim.ZeroRedundancyOptimizer)")
    add("--fsdp", action="store_true", help="FSDP2: shard parameters, gradients and optimizer states over the ranks")
    add("--activation-checkpointing", action="store_true", help="recompute each block's activations in backward")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--dtype", default="auto", choices=["auto", *hardware.DTYPES], help="autocast dtype (auto: bf16 on GPUs "
        "with native bf16, compute capability >= 8.0; fp16 with a GradScaler on older GPUs; fp32 on CPU and MPS)")
    add("--seed", type=int, default=1337, help="seeds the initialization and the data order")
    add("--skip-spikes", type=float, default=0.0, help="skip the update of a step whose loss is this many "
        "standard deviations above the mean of the last 100 (0: only NaN/inf losses are skipped)")
    add("--max-bad-steps", type=int, default=5, help="stop after this many skipped steps in a row (0: never)")
    add("--wandb", default=None, metavar="PROJECT", help="also log to this Weights & Biases project (None: off)")
    add("--wandb-run", default=None, metavar="NAME", help="the W&B run's name (None: W&B picks one)")
    add("--demo", action="store_true", help="small preset for a CPU: " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in DEMO_PRESET.items()))
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**DEMO_PRESET)
        args = parser.parse_args(argv)  # parse again: flags given on the command line win over the preset
    return args


def batch_size_arg(text):
    return text if text == "auto" else int(text)




class FatalError(Exception):
    """A problem the user can fix: printed as one line `error: ...`, exit code 2."""


class Diverged(FatalError):
    """Too many bad steps in a row: exit code 3, so that a wrapper can tell it from bad input."""


def model_config(args):
    overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd") + ARCH_FIELDS}  # None: not given
    try:
        return GPTConfig.preset(args.model, arch=args.arch, vocab_size=args.vocab_size, **overrides)
    except ValueError as e:
        raise FatalError(str(e)) from None


def describe_arch(args, config, n_params):
    """One line: the arch, its MLP width, and its parameter count against GPT-2's at the same size."""
    sizes = {k: getattr(config, k) for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")}
    with torch.device("meta"):  # shapes only: no memory, no RNG
        gpt2_params = GPT(GPTConfig(**sizes)).num_params()
    return (f"arch {args.arch}: {config.mlp} MLP of width {config.mlp_hidden or 4 * config.n_embd}, {n_params:,} "
            f"parameters, {100 * (n_params / gpt2_params - 1):+.2f}% against gpt2's {gpt2_params:,} at this size")


def check_args(args, config, world_size, batch_size):
    """Reject impossible settings before any work is done. batch_size: B, as --batch-size auto resolved it."""
    flag = lambda name: "--" + name.replace("_", "-")
    if batch_size <= 0:
        raise FatalError(f"--batch-size must be positive, got {batch_size}")
    positive = ["seq_len", "total_batch_size", "vocab_size", "n_layer", "n_head", "n_embd",
                "sample_tokens", "max_lr"] + ([] if args.epochs else ["max_steps"])
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise FatalError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ["warmup_steps", "epochs", "eval_every", "val_tokens", "hellaswag_every", "sample_every", "min_lr",
                 "checkpoint_every", "keep_checkpoints", "max_bad_steps", "weight_decay", "grad_clip", "skip_spikes"]:
        if getattr(args, name) < 0:
            raise FatalError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.decay_frac <= 1:
        raise FatalError(f"--decay-frac must be between 0 and 1, got {args.decay_frac}")
    if config.n_embd % config.n_head:
        raise FatalError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
    if args.seq_len > config.block_size:
        raise FatalError(f"--seq-len {args.seq_len} is longer than the model's block_size {config.block_size}")
    tokens_per_micro_step = batch_size * args.seq_len * world_size
    if args.total_batch_size % tokens_per_micro_step:
        raise FatalError(f"--total-batch-size {args.total_batch_size} is not a multiple of batch-size x seq-len x "
                         f"world size = {batch_size} x {args.seq_len} x {world_size} = {tokens_per_micro_step}; "
                         f"use a multiple of {tokens_per_micro_step} or change --batch-size")


def resolve_batch_size(args, device_type):
    """B: --batch-size, or for 'auto' where there is no GPU to probe, the default or its largest divisor of the rows
    each rank takes per step (so the global batch stays the flags')."""
    if args.batch_size != "auto":
        return args.batch_size
    rows_per_rank = args.total_batch_size // (args.seq_len * world_size)
    default = DEMO_PRESET["batch_size"] if args.demo else DEFAULT_BATCH_SIZE
    batch_size = memory.fallback_micro_batch(rows_per_rank, default)
    if master:
        print(f"batch size auto: {batch_size}, the default {default} or its largest divisor of the {rows_per_rank} "
              f"rows per rank and step: there is no GPU to probe on {device_type}")
    return batch_size


# -----------------------------------------------------------------------------
# data: uint16 token shards read through memory maps

ETA_MIN_STEPS = 5  # steps run before the printed ETA means anything (step 0 carries compilation and the first eval)
DATA_ORDER = "mix64-sort-v1"  # names the shuffle below in checkpoints: a resume refuses any other


def open_split(data_dir, split):
    """A split's shard paths and their tokens as memmaps (fineweb.py's readers), or one FatalError line."""
    try:
        paths = fineweb.list_shards(data_dir, split)
        return paths, [fineweb.open_shard(path) for path in paths]
    except (OSError, ValueError) as e:
        raise FatalError(str(e)) from None


MASK64 = 2**64 - 1


def mix64(x):
    """splitmix64's finalizer (Steele, Lea and Flood 2014): a bijection of 64-bit integers that scrambles every bit.
    Works on a Python int or a uint64 numpy array, with the same explicit wrapping arithmetic."""
    if isinstance(x, int):
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        return x ^ (x >> 31)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64, which is what is wanted
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permutation(n, *key):
    """The project's own seeded shuffle, defined here so that no library upgrade can change a run's data order
    (numpy does not promise Generator.permutation's output across versions): item i gets the sort key
    mix64(h ^ i), with h = mix64(... mix64(mix64(0 ^ key[0]) ^ key[1]) ...), and the items are taken in
    increasing key order (ties, which need a 64-bit collision, in index order). Pinned by a golden test."""
    h = 0
    for k in key:
        h = mix64(h ^ (k & MASK64))
    keys = mix64(np.uint64(h) ^ np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable")


class ShardLoader:
    """Windows of T+1 tokens at stride T, read from a split's shards as one endless stream (see the top of the
    file). shuffle=True (train): a seeded permutation of the shards per epoch and of each shard's windows.
    shuffle=False (val): the shards and their windows in order."""

    def __init__(self, data_dir, split, batch_size, seq_len, rank=0, world_size=1, seed=0, shuffle=False,
                 vocab_size=None):
        self.B, self.T, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.seed, self.shuffle, self.vocab_size, self.checked = seed, shuffle, vocab_size, set()
        self.paths, self.shards = open_split(data_dir, split)
        self.counts = [max(0, len(tokens) - 1) // seq_len for tokens in self.shards]  # a 0 never gets a slot
        self.windows_per_epoch = sum(self.counts)
        if self.windows_per_epoch < batch_size:
            raise FatalError(f"the {split} shards in {data_dir} hold {self.windows_per_epoch} rows of "
                             f"{seq_len}+1 tokens, fewer than one batch of --batch-size {batch_size}")
        self.position = 0  # windows of the stream dealt out so far, to all ranks together
        self._plan, self._orders = (None, None, None), {}

    def _epoch_plan(self, epoch):
        """The shards in this epoch's order, and the stream index at which each one starts."""
        if self._plan[0] != epoch:
            order = np.arange(len(self.shards))
            if self.shuffle:
                order = permutation(len(self.shards), self.seed, epoch)
            self._plan = (epoch, order, np.cumsum([0] + [self.counts[k] for k in order]))
        return self._plan[1:]

    def _window_order(self, epoch, shard):
        if (epoch, shard) not in self._orders:
            if len(self._orders) >= 4:  # a batch spans at most a few shards: keep the cache tiny
                self._orders.clear()
            self._orders[(epoch, shard)] = permutation(self.counts[shard], self.seed, epoch, shard)
        return self._orders[(epoch, shard)]

    def window(self, index):
        """Tokens (T+1,) of window `index` of the stream."""
        epoch, i = divmod(index, self.windows_per_epoch)
        order, starts = self._epoch_plan(epoch)
        slot = int(np.searchsorted(starts, i, side="right")) - 1
        shard, w = int(order[slot]), i - int(starts[slot])
        if self.shuffle:
            w = int(self._window_order(epoch, shard)[w])
        if shard not in self.checked:
            self.check_ids(shard)
        return self.shards[shard][w * self.T: w * self.T + self.T + 1]

    def check_ids(self, shard):
        """Once per shard, when first read (one pass over it): an id >= vocab_size would be a device-side assert
        in the embedding on CUDA, far from its cause."""
        largest = int(self.shards[shard].max(initial=0))
        if self.vocab_size is not None and largest >= self.vocab_size:
            raise FatalError(f"{self.paths[shard]} holds token id {largest}, which --vocab-size {self.vocab_size} "
                             f"cannot embed: it was tokenized for a larger vocabulary; raise --vocab-size or "
                             f"re-create the shard")
        self.checked.add(shard)

    def batch(self, first):
        """B consecutive windows of the stream from `first`, as a (B, T+1) int64 tensor on the host."""
        rows = np.stack([self.window(first + j) for j in range(self.B)])
        return torch.from_numpy(rows.astype(np.int64))

    def next_batch(self):
        """This rank's next micro-batch: runs of B windows are dealt to the ranks in turn."""
        rows = self.batch(self.position + self.rank * self.B)
        self.position += self.B * self.world_size
        return rows

    def state_dict(self):
        return dict(position=self.position, seq_len=self.T, seed=self.seed, windows_per_epoch=self.windows_per_epoch,
                    order=DATA_ORDER)

    def load_state_dict(self, state):
        if state.get("order") != DATA_ORDER:  # older checkpoints: numpy's Generator.permutation
            raise FatalError("the checkpoint's data order came from numpy's Generator.permutation, which this version "
                             "replaced by its own shuffle: resume it with the version that wrote it, or start a new "
                             "--log-dir")
        for key, value in self.state_dict().items():
            if key != "position" and state[key] != value:
                raise FatalError(f"the checkpoint's data had {key}={state[key]}, this run has {value}: resume with "
                                 f"the same --seq-len, --seed and shards, or start a new --log-dir")
        self.position = state["position"]


def open_data(args, batch_size):
    """The train and val loaders, the val windows an evaluation reads, and the run's steps (from --epochs if given);
    data too small for one step, one val batch or one epoch's step is one FatalError line."""
    T, windows_per_step = args.seq_len, args.total_batch_size // args.seq_len
    train_loader = ShardLoader(args.data_dir, "train", batch_size, T, rank, world_size, args.seed, shuffle=True,
                               vocab_size=args.vocab_size)
    val_loader = ShardLoader(args.data_dir, "val", batch_size, T, vocab_size=args.vocab_size)
    if train_loader.windows_per_epoch < windows_per_step:
        raise FatalError(f"the train shards hold {train_loader.windows_per_epoch * T} tokens, fewer than one step "
                         f"of --total-batch-size {args.total_batch_size}")
    val_windows = min(args.val_tokens // T, val_loader.windows_per_epoch)
    if args.eval_every and val_windows < batch_size:
        raise FatalError(f"--val-tokens {args.val_tokens} is less than one val batch of {batch_size * T} tokens")
    max_steps = args.max_steps
    if args.epochs:
        max_steps = args.epochs * train_loader.windows_per_epoch // windows_per_step
        if max_steps == 0:
            raise FatalError(f"--epochs {args.epochs} is less than one step of {args.total_batch_size} tokens")
    return train_loader, val_loader, val_windows, max_steps


def to_device(rows, device):
    """Host rows (B, T+1) -> inputs and targets on the device. From pinned memory the copy is asynchronous, so
    it overlaps with the GPU work already queued."""
    rows = rows.pin_memory() if device.startswith("cuda") else rows
    rows = rows.to(device, non_blocking=True)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


# -----------------------------------------------------------------------------
# the training step: written once, and run by the loop below, by bench.py and by --batch-size auto's probe


def loss_chunk_rows(vocab_size, device_type, dtype):
    """Rows per chunk of the training loss. On CUDA it is computed ~256 MiB of fp32 logits at a time, with no
    (B*T, vocab) tensor (eager cross-entropy holds three fp32 copies, ~37 GiB at B=64, T=1024). On CPU 0: the plain
    loss, whose losses are bit-identical to earlier runs (the chunked loss equals it to float rounding, and so do
    its gradients: tests/test_model.py). fp16 takes the plain loss too: the chunked loss makes its gradients in the
    forward pass, before GradScaler's scale, and fp16 rounds most of them to 0 (the softmax of a 50k vocab divided
    by the B*T targets is below fp16's 6e-8 for nearly every token)."""
    if device_type != "cuda" or not memory.cuda_loss_is_chunked(dtype):  # the memory model reads the same rule
        return 0
    return chunked_loss_rows(vocab_size)


def chunked_loss_rows(vocab_size):
    """Rows per chunk wherever the chunked loss runs: LOSS_CHUNK_ELEMENTS logits at a time."""
    return max(1, memory.LOSS_CHUNK_ELEMENTS // vocab_size)


def forward_backward(model, x, y, autocast, loss_chunk, grad_accum_steps, scaler=None, sync=True, loss_factor=None):
    """One micro-step: forward under autocast, the loss as its share of the step's mean, backward. sync=False
    holds back DDP's gradient all-reduce (every micro-step but the last). loss_factor scales the loss (a test hook).
    Returns the detached share of the loss."""
    sync_context = contextlib.nullcontext() if sync else memory.no_grad_sync(model)
    with sync_context:
        with autocast:
            loss = model(x, y, loss_chunk=loss_chunk)[1]  # the logits are not kept (or, chunked, not made)
        if loss_factor is not None:
            loss = loss * loss_factor
        loss = loss / grad_accum_steps  # the gradients sum over micro-steps: make that their mean
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
    return loss.detach()


def micro_step_probe(raw_model, autocast, config, device_type, dtype):
    """What --batch-size auto runs on B random rows: this training micro-step, with its autocast and loss chunks."""
    loss_chunk = loss_chunk_rows(config.vocab_size, device_type, dtype)
    return functools.partial(forward_backward, raw_model, autocast=autocast, loss_chunk=loss_chunk, grad_accum_steps=1)


# -----------------------------------------------------------------------------
# the pieces of the loop

def get_lr(step, max_lr, min_lr, warmup_steps, max_steps, schedule="cosine", decay_frac=0.2):
    """Linear warmup to max_lr over warmup_steps, then cosine decay to min_lr at max_steps (the reference's), or
    schedule "wsd": max_lr held until the last decay_frac of max_steps, which decay linearly to min_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, max_steps - round(decay_frac * max_steps))
        return max_lr + (min_lr - max_lr) * max(0, step - decay_start) / max(1, max_steps - decay_start)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def due(every, step, max_steps):
    """Periodic work happens every `every` steps and at the end; 0 turns it off."""
    return every > 0 and (step % every == 0 or step == max_steps)


SPIKE_WINDOW = 100  # losses of accepted steps the spike test looks back on
SPIKE_MIN_HISTORY = 10  # and how many it needs before it judges


def is_spike(loss, recent_losses, z_threshold):
    """llm.c's --skip_update_lossz: the loss is z_threshold standard deviations above the recent mean."""
    if z_threshold <= 0 or len(recent_losses) < SPIKE_MIN_HISTORY:
        return False
    mean, std = statistics.fmean(recent_losses), statistics.pstdev(recent_losses)
    return std > 0 and (loss - mean) / std > z_threshold



def skip_reason(loss, norm, scaler, recent_losses, z_threshold):
    """Why this step's update must not reach the weights (a NaN/inf loss or gradient, or a loss spike), or None.
    With fp16, inf gradients are the GradScaler's to skip, as usual."""
    if not math.isfinite(loss) or (scaler is None and not math.isfinite(norm)):
        return "not finite"
    if is_spike(loss, recent_losses, z_threshold):
        return "a spike"
    return None


class StopSignals:
    """SIGTERM and Ctrl-C are noted in `received`: the loop finishes the step, writes a checkpoint and exits. The
    default handlers come back at the first signal, so a second one stops the process at once."""

    def __init__(self):
        self.received = []
        self.original = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.original:
            signal.signal(s, self.on_signal)

    def on_signal(self, signum, frame):
        self.received.append(signum)
        for s, handler in self.original.items():
            signal.signal(s, handler)


@torch.no_grad()
def evaluate_val(model, loader, n_batches, device, autocast, rank, world_size, lockstep=False):
    """Mean loss over the first n_batches of the val stream; rank r takes batches r, r + world_size... Summed in
    float64, where adding float32 losses in any order gives the same result: the same val loss for any world size.
    lockstep (FSDP): every rank runs as many forwards, a rank past the end repeating batch 0 without counting it."""
    acc_dtype = torch.float32 if device.startswith("mps") else torch.float64  # MPS has no float64
    total = torch.zeros(2, dtype=acc_dtype, device=device)  # (sum of batch losses, batches)
    end = -(-n_batches // world_size) * world_size if lockstep else n_batches
    for i in range(rank, end, world_size):
        x, y = to_device(loader.batch(i * loader.B if i < n_batches else 0), device)
        with autocast:
            loss = model(x, y)[1]  # the logits are not kept into the next batch
        if i < n_batches:
            total += torch.stack([loss.to(acc_dtype), torch.ones((), dtype=acc_dtype, device=device)])
    if world_size > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def print_samples(model, enc, step, seed, device, autocast, max_new_tokens, show=True, num_samples=4):
    """The reference's prompt continued (top-k 50, KV cache) by our own generator: training's RNG is untouched.
    Returns the texts."""
    prompt = torch.tensor(enc.encode("Hello, I'm a language model,"), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed + step)
    with autocast:
        out = model.generate(prompt.repeat(num_samples, 1), max_new_tokens, top_k=50, generator=generator)
    for i, row in enumerate(out.tolist() if show else []):
        print(f"sample {i}: {enc.decode(row)!r}")
    return [enc.decode(row) for row in out.tolist()]


def print_run_summary(args, config, n_params, device, device_name, dtype, use_compile, strategy, B, grad_accum_steps,
                      max_steps, windows_per_epoch, val_batches, flops_per_tok):
    """What rank 0 prints before the first step: the model, the device, the FLOPs convention and the batch."""
    T = args.seq_len
    print(f"model {args.model} {dataclasses.asdict(config)}: {n_params:,} parameters")
    schedule = f"schedule {args.schedule}"
    if args.schedule == "wsd":
        schedule += f" (decay over the last {args.decay_frac:g})"
    print(f"{describe_arch(args, config, n_params)}; optimizer {args.optimizer}, {schedule}")
    print(f"device {device} ({device_name}), dtype {dtype}, compile {use_compile}, world size {world_size}")
    peak = peak_flops(device_name)
    against = "an unknown peak (mfu unknown)" if peak is None else f"a dense peak of {peak / 1e12:g} TFLOP/s"
    print(f"{FLOPS_CONVENTION}: {flops_per_tok:,} per token, against {against}")
    print(f"total batch {args.total_batch_size} tokens = {B} x {T} x {world_size} ranks x {grad_accum_steps} "
          f"accumulation steps; {max_steps} steps; {windows_per_epoch * T:,} train tokens per epoch; "
          f"{val_batches * B * T:,} val tokens")
    sharding = "none" if strategy == "ddp" else memory.strategy_name(strategy)
    checkpointing = "on" if args.activation_checkpointing else "off"
    print(f"sharding: {sharding}; activation checkpointing {checkpointing}")


def eta_seconds(steps_left, step_times, steps_run, other_seconds):
    """The steps left at the recent median step time, plus the evals' and checkpoints' share of the time so far
    (other_seconds over steps_run). The first steps (compilation, step 0's eval) say nothing yet about the rest:
    None before ETA_MIN_STEPS."""
    if steps_run < ETA_MIN_STEPS:
        return None
    return round(steps_left * (statistics.median(step_times) + other_seconds / steps_run), 3)


def start_wandb(args, run_flags, config, run_id):
    """Rank 0's Weights & Biases run, with the whole config. A resumed training run continues the W&B run whose
    id its checkpoint holds (resume="must"); a fresh one starts a new run, whose id the checkpoints keep."""
    try:
        import wandb
    except ImportError:
        raise FatalError("--wandb needs the wandb package: pip install wandb") from None
    try:
        return wandb.init(project=args.wandb, name=args.wandb_run, id=run_id, resume="must" if run_id else None,
                          config=dict(args=run_flags, model=dataclasses.asdict(config)))
    except Exception as e:  # not logged in, no network, a run id the project does not have, ...
        reason = " ".join(str(e).split())[:300]
        raise FatalError(f"--wandb {args.wandb}: could not start the W&B run ({type(e).__name__}: {reason}); run "
                         f"`wandb login`, or set WANDB_MODE=offline and `wandb sync` later") from None


@dataclasses.dataclass
class TrainState:
    """What a run carries from step to step besides its weights, optimizer and data position, under the names its
    checkpoints use: a resume restores exactly this."""
    step: int = 0  # updates done
    recent_losses: deque = dataclasses.field(default_factory=lambda: deque(maxlen=SPIKE_WINDOW))  # for is_spike
    bad_steps: int = 0  # updates skipped in a row
    evals_done: bool = False  # this step's evals ran before the checkpoint was written
    elapsed_s: float = 0.0  # training time before this process started
    wandb_run_id: str = None

    @classmethod
    def from_checkpoint(cls, checkpoint):
        return cls(step=checkpoint["step"], recent_losses=deque(checkpoint["recent_losses"], maxlen=SPIKE_WINDOW),
                   bad_steps=checkpoint["bad_steps"], evals_done=checkpoint["evals_done"],
                   elapsed_s=checkpoint.get("elapsed_s", 0.0), wandb_run_id=checkpoint.get("wandb_run_id"))

    def to_checkpoint(self):
        return dict(step=self.step, recent_losses=list(self.recent_losses), bad_steps=self.bad_steps,
                    evals_done=self.evals_done, elapsed_s=self.elapsed_s, wandb_run_id=self.wandb_run_id)


def build_model(args, config, checkpoint, strategy, device):
    """The model, seeded, with a resumed checkpoint's weights loaded before any sharding, and its optimizer."""
    device_type = device.split(":")[0]
    torch.manual_seed(args.seed)
    raw_model = GPT(config).to(device)
    if checkpoint:
        raw_model.load_state_dict(checkpoint["model"])
    if args.activation_checkpointing:
        memory.checkpoint_blocks(raw_model)
    try:  # FSDP2 may not run on this device with this torch, nor shard every optimizer
        if strategy == "fsdp":
            memory.shard_model(raw_model, device_type)
        optimizer = raw_model.configure_optimizers(args.weight_decay, args.max_lr, device_type,
                                                   optimizer=args.optimizer)
        optimizer = memory.shard_optimizer(optimizer, strategy)
    except ValueError as e:
        raise FatalError(str(e)) from None
    return raw_model, optimizer


def restore_training_state(checkpoint, raw_model, optimizer, strategy, scaler, device_type):
    """Everything but the weights (loaded before sharding) and the data position (loaded with the loader)."""
    memory.load_optimizer_state(raw_model, optimizer, checkpoint["optimizer"], strategy)
    if scaler is not None and checkpoint.get("grad_scaler"):
        scaler.load_state_dict(checkpoint["grad_scaler"])
    if rank < len(checkpoint["rng"]):  # a resume on more ranks than saved: the new ranks keep their fresh seeds
        set_rng_state(checkpoint["rng"][rank], device_type)
    return TrainState.from_checkpoint(checkpoint)


def check_ranks_start_together(start_step, device):
    """A rank that found no checkpoint would start over alone: all nodes must share the log dir."""
    steps = torch.tensor([start_step, -start_step], device=device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    latest, minus_earliest = steps.tolist()
    if latest != -minus_earliest:
        raise FatalError(f"ranks resume from different steps ({-minus_earliest} to {latest}): --log-dir must be "
                         f"one directory shared by all nodes")


def loader_state(loader, prefetched):
    """The loader's state as a checkpoint keeps it: a micro-batch prefetched (on every rank) for a step not yet run
    is read again on resume."""
    state = loader.state_dict()
    state["position"] -= loader.B * loader.world_size if prefetched else 0
    return state


def prepare_log_dir(log_dir):
    """Make the log dir, and remove the temporary file a run killed mid-write left (its final name never got it)."""
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
        if re.fullmatch(r"model_\d+\.pt\.tmp", name):
            os.remove(os.path.join(log_dir, name))


def write_checkpoint(log_dir, state, val_loss, raw_model, optimizer, strategy, scaler, config, loader_state,
                     run_flags, device_type, keep_checkpoints=0, sleep_before_rename=0.0):
    """The whole training state after state.step updates, in log_dir/model_{step:05d}.pt. Every rank contributes its
    RNG state and its shards of the model and optimizer (gathered on rank 0); rank 0 writes the file, then removes
    the oldest beyond keep_checkpoints (0: keep all)."""
    rng_states = [rng_state(device_type)]
    if ddp:
        rng_states = [None] * world_size
        dist.all_gather_object(rng_states, rng_state(device_type))
    model_state, optimizer_state = memory.full_state(raw_model, optimizer, strategy)
    if not master:
        return
    grad_scaler = scaler.state_dict() if scaler else None
    path = os.path.join(log_dir, f"model_{state.step:05d}.pt")
    save_checkpoint(path, dict(model=model_state, config=dataclasses.asdict(config), val_loss=val_loss,
                               optimizer=optimizer_state, loader=loader_state, rng=rng_states, grad_scaler=grad_scaler,
                               args=run_flags, **state.to_checkpoint()), sleep_before_rename)
    if keep_checkpoints:
        for _, old in find_checkpoints(log_dir)[:-keep_checkpoints]:
            os.remove(old)
    print(f"wrote {path}")


def fault_injection_hooks():
    """Fault injection for the tests, from environment variables real runs do not set: TRAIN_GPT2_TEST_LOSS_FACTOR=
    "3=nan,9=100" scales those steps' loss; TRAIN_GPT2_TEST_KILL_AT="rank:step" SIGKILLs that rank then (first torchrun
    attempt only); TRAIN_GPT2_TEST_STEP_SLEEP / _CHECKPOINT_SLEEP: seconds after each step / before each rename."""
    env = os.environ.get
    factors = dict(item.split("=") for item in env("TRAIN_GPT2_TEST_LOSS_FACTOR", "").split(",") if item)
    kill = env("TRAIN_GPT2_TEST_KILL_AT", "")
    first_attempt = env("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    return dict(loss_factor={int(step): float(factor) for step, factor in factors.items()},
                kill_at=tuple(map(int, kill.split(":"))) if kill and first_attempt else None,
                step_sleep=float(env("TRAIN_GPT2_TEST_STEP_SLEEP", "0")),
                checkpoint_sleep=float(env("TRAIN_GPT2_TEST_CHECKPOINT_SLEEP", "0")))


# -----------------------------------------------------------------------------
# DDP facts from torchrun's environment, computed once: the only state shared by everything in this file

ddp = "RANK" in os.environ  # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE
rank = int(os.environ.get("RANK", 0))
local_rank = int(os.environ.get("LOCAL_RANK", 0))
world_size = int(os.environ.get("WORLD_SIZE", 1))
master = rank == 0  # rank 0 prints, logs and writes checkpoints

# -----------------------------------------------------------------------------
# main: setup, then the loop

def main(argv=None):
    args = parse_args(argv)  # what the user typed; values derived from it live in their own names below
    sys.stdout.reconfigure(line_buffering=True)  # step lines show up at once through pipes and tee
    hooks = fault_injection_hooks()

    # the device, the 16-bit format and the sharding
    config = model_config(args)
    try:  # bf16 only where the GPU has it natively (compute capability >= 8.0), else fp16 with a GradScaler
        device = hardware.pick_device(args.device, local_rank, ddp)
        dtype = hardware.pick_dtype(args.dtype, device, warn=master)
        strategy = memory.pick_strategy(args.fsdp, args.shard_optimizer, dtype, world_size)
    except ValueError as e:
        raise FatalError(str(e)) from None
    if master and world_size == 1 and (args.fsdp or args.shard_optimizer):
        print(f"note: one process, nothing to shard: --{'fsdp' if args.fsdp else 'shard-optimizer'} ignored")
    device_type = device.split(":")[0]

    # the batch: B rows of T tokens per micro-step; --batch-size auto is probed on CUDA once the model exists
    T = args.seq_len
    probe_batch = args.batch_size == "auto" and device_type == "cuda"
    B = 1 if probe_batch else resolve_batch_size(args, device_type)
    check_args(args, config, world_size, B)
    grad_accum_steps = args.total_batch_size // (B * T * world_size)

    # data and the checkpoint to resume from are checked first, so that they fail before the process group forms
    train_loader, val_loader, val_windows, max_steps = open_data(args, B)
    val_batches = val_windows // B
    # the flags as this run resolved them (auto's choices made): what a checkpoint records and a resume compares
    run_flags = dict(vars(args), batch_size=B, max_steps=max_steps, dtype=dtype)
    resume_path = resolve_resume(args.resume, args.log_dir)  # the newest in the log dir (auto), a given one, or none
    checkpoint = None
    resume_notes = []
    if resume_path:
        checkpoint = load_resume_checkpoint(resume_path, config, args.optimizer, args.log_dir)
        resume_notes = check_resume_args(resume_path, checkpoint, run_flags, world_size, checkpoint["step"])
        train_loader.load_state_dict(checkpoint["loader"])

    if ddp:
        init_process_group("nccl" if device_type == "cuda" else "gloo", rank, world_size)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    ptdtype = hardware.DTYPES[dtype]
    autocast = hardware.autocast(dtype, device)
    loss_chunk = loss_chunk_rows(config.vocab_size, device_type, dtype)

    # the model (its weights resumed before any sharding), its optimizer, and the fp16 loss scaler
    raw_model, optimizer = build_model(args, config, checkpoint, strategy, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    if probe_batch:
        probe_step = micro_step_probe(raw_model, autocast, config, device_type, dtype)
        B, note = memory.auto_micro_batch(raw_model, optimizer, strategy, config, args.total_batch_size, T, dtype,
                                          args.activation_checkpointing, world_size, device, probe_step)
        if master:
            print(note)
        train_loader.B = val_loader.B = B
        run_flags["batch_size"] = B
        if checkpoint:  # its notes compared the flags before the probe chose B
            resume_notes = check_resume_args(resume_path, checkpoint, run_flags, world_size, checkpoint["step"])
        grad_accum_steps = args.total_batch_size // (B * T * world_size)
        val_batches = max(1, val_windows // B)

    # resume the whole training state
    state = TrainState()
    if checkpoint:
        state = restore_training_state(checkpoint, raw_model, optimizer, strategy, scaler, device_type)
        del checkpoint  # its copy of the weights and optimizer state is not needed any more
    start_step = state.step
    if ddp:
        check_ranks_start_together(start_step, device)
    run_log = None
    if master:
        prepare_log_dir(args.log_dir)
        wandb_run = start_wandb(args, run_flags, config, state.wandb_run_id) if args.wandb else None
        if wandb_run:
            state.wandb_run_id = wandb_run.id  # kept in every checkpoint, so a resume continues this W&B run
        run_log = RunLog(args.log_dir, append=resume_path is not None, wandb_run=wandb_run)
        run_log.log(start_step, "config", args=run_flags)  # the data and flags the run trained with (plot_log.py)

    # compile for training and val (fixed shapes); HellaSwag and sampling have varying shapes and use
    # raw_model, which shares the parameters, so nothing recompiles and nothing breaks
    use_compile = args.compile
    if use_compile is None:
        use_compile = device_type == "cuda"
    eval_model = model = torch.compile(raw_model) if use_compile else raw_model
    if ddp and strategy != "fsdp":
        device_ids = [local_rank] if device_type == "cuda" else None
        model = DDP(model, device_ids=device_ids)
    everyone = strategy == "fsdp"  # FSDP's forwards gather weights: every rank takes part in every evaluation

    # periodic work: which of it can run here
    vocab_ok = config.vocab_size >= 50257  # the GPT-2 tokenizer's ids must fit the embedding
    hellaswag_examples = None
    if args.hellaswag_every and vocab_ok:
        hellaswag_examples = hellaswag.load_examples_on_every_rank(rank, world_size, device)
    hellaswag_rank, hellaswag_world_size = rank, world_size  # each rank scores its share of the examples ...
    if everyone:
        hellaswag_rank, hellaswag_world_size = 0, 1  # ... but under FSDP every rank scores all of them
    hellaswag_batch_size = 16 if device_type == "cuda" else 1  # on CPU, big batches are slower
    enc = None
    if args.sample_every and vocab_ok and (master or everyone):
        enc = fineweb.get_tokenizer()
    if master and not vocab_ok and (args.hellaswag_every or args.sample_every):
        print(f"warning: vocab {config.vocab_size} cannot hold GPT-2 tokens: no HellaSwag, no samples", file=sys.stderr)
    flops_per_tok = flops_per_token(config, T)
    device_name = torch.cuda.get_device_name(device) if device_type == "cuda" else device_type

    if master:
        print_run_summary(args, config, raw_model.num_params(), device, device_name, dtype, use_compile, strategy, B,
                          grad_accum_steps, max_steps, train_loader.windows_per_epoch, val_batches, flops_per_tok)
        print(f"resuming from {resume_path} at step {start_step}" if resume_path else "starting from scratch")
        for note in resume_notes:
            print(f"note: {note}")

    stop_signals = StopSignals()  # SIGTERM / Ctrl-C: checkpoint at the end of the step, then exit

    # -------------------------------------------------------------------------
    # the loop: at the top of iteration `step`, the weights have had `step` updates
    batch = None  # the prefetched micro-batch (B windows the loader has dealt but no step has used yet)
    step_times = deque(maxlen=50)  # for the ETA: the recent steps' times
    steps_run = 0
    step_seconds = 0.0  # the time of every step run here, evals and checkpoints excluded
    loop_start = time.time()
    for step in range(start_step, max_steps + 1):
        val_loss = None
        if step > start_step or not state.evals_done:  # a resumed checkpoint's step was evaluated before it was saved
            if due(args.eval_every, step, max_steps):
                val_loss = evaluate_val(eval_model, val_loader, val_batches, device, autocast, rank, world_size,
                                        lockstep=everyone)
                if master:
                    run_log.log(step, "val", loss=val_loss)
            if hellaswag_examples and due(args.hellaswag_every, step, max_steps):
                result = hellaswag.evaluate(raw_model, hellaswag_examples, device, autocast_dtype=ptdtype,
                                            rank=hellaswag_rank, world_size=hellaswag_world_size,
                                            batch_size=hellaswag_batch_size)
                if master:
                    run_log.log(step, "hellaswag", **{k: result[k] for k in HELLASWAG_SCORES}, n=result["n"])
            if enc is not None and step > 0 and due(args.sample_every, step, max_steps):
                samples = print_samples(raw_model, enc, step, args.seed, device, autocast, args.sample_tokens, master)
                if master:
                    run_log.log(step, "samples", samples=samples)
        if step > start_step and due(args.checkpoint_every, step, max_steps):
            elapsed_s = state.elapsed_s + time.time() - loop_start
            snapshot = dataclasses.replace(state, step=step, evals_done=True, elapsed_s=elapsed_s)
            write_checkpoint(args.log_dir, snapshot, val_loss, raw_model, optimizer, strategy, scaler, config,
                             loader_state(train_loader, batch is not None), run_flags, device_type,
                             args.keep_checkpoints, hooks["checkpoint_sleep"])
        if step == max_steps:
            break

        # one optimizer step over total_batch_size tokens: grad_accum_steps micro-batches per rank
        t0 = time.time()
        if step == start_step and device_type == "cuda":  # the memory report's peak is this step's, not the
            torch.cuda.reset_peak_memory_stats(device)  # --batch-size auto probe's nor the step-0 evals'
        if hooks["kill_at"] == (rank, step):
            os.kill(os.getpid(), signal.SIGKILL)
        if batch is None:
            batch = to_device(train_loader.next_batch(), device)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = batch
            # prefetch the next micro-batch, the next step's first one too: host work and copy overlap the queued
            # GPU work, also with one micro-step per step (8 GPUs). A checkpoint counts it as not yet read.
            last = micro_step + 1 == grad_accum_steps and step + 1 == max_steps
            batch = None if last else to_device(train_loader.next_batch(), device)
            # DDP all-reduces gradients during backward: only on the last micro-step, once they are complete
            sync = not ddp or micro_step == grad_accum_steps - 1
            loss_accum += forward_backward(model, x, y, autocast, loss_chunk, grad_accum_steps, scaler, sync,
                                           hooks["loss_factor"].get(step))
        # one all-reduce carries the loss and whether any rank was asked to stop
        stop_flag = torch.full_like(loss_accum, float(bool(stop_signals.received)))  # built on the device: no H2D copy
        stats = torch.stack([loss_accum, stop_flag])
        if ddp:
            dist.all_reduce(stats)
        if scaler:
            scaler.unscale_(optimizer)
        norm = memory.clip_grad_norm(raw_model, args.grad_clip or float("inf"))
        train_loss, stop_votes, norm = torch.stack([stats[0] / world_size, stats[1], norm.float()]).tolist()  # 1 sync
        lr = get_lr(step, args.max_lr, args.min_lr, args.warmup_steps, max_steps, args.schedule, args.decay_frac)
        # every rank sees the same loss and norm, so all skip together
        skipped = skip_reason(train_loss, norm, scaler, state.recent_losses, args.skip_spikes)
        if skipped:
            state.bad_steps += 1
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
            if scaler:
                scaler.step(optimizer)
            else:
                optimizer.step()
            state.bad_steps = 0
            state.recent_losses.append(train_loss)
        if scaler:
            scaler.update()
        if step == start_step:  # the training states all exist now: what each rank holds
            lines = memory.memory_report(raw_model, optimizer, device, world_size)  # every rank measures its own
            if master:
                print("\n".join(lines))
        optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0  # no device sync just to time it: the next step's loss read waits for this one
        step_times.append(dt)
        steps_run += 1
        step_seconds += dt
        elapsed = state.elapsed_s + time.time() - loop_start
        eta = eta_seconds(max_steps - step - 1, step_times, steps_run, time.time() - loop_start - step_seconds)

        if master:
            tokens_per_sec = args.total_batch_size / dt
            mfu = estimate_mfu(tokens_per_sec / world_size, flops_per_tok, device_name)
            run_log.log(step, "train", loss=train_loss, lr=lr, norm=norm, dt_ms=dt * 1000,
                        tokens_per_sec=tokens_per_sec, mfu=mfu, elapsed_s=round(elapsed, 3), eta_s=eta,
                        max_steps=max_steps, skipped=skipped, bad_steps=state.bad_steps)
        if args.max_bad_steps and state.bad_steps >= args.max_bad_steps:
            kept = find_checkpoints(args.log_dir)[-1:] or [(0, "none")]
            raise Diverged(f"{state.bad_steps} steps in a row, up to step {step}, had a non-finite or spiking loss: "
                           f"stopping. Their updates were skipped; the last checkpoint is {kept[0][1]}. Resume from it "
                           f"with a lower --max-lr, or check the data")
        if stop_votes:
            snapshot = dataclasses.replace(state, step=step + 1, evals_done=False, elapsed_s=elapsed)
            write_checkpoint(args.log_dir, snapshot, None, raw_model, optimizer, strategy, scaler, config,
                             loader_state(train_loader, batch is not None), run_flags, device_type,
                             args.keep_checkpoints, hooks["checkpoint_sleep"])
            signum = stop_signals.received[0] if stop_signals.received else signal.SIGTERM
            if master:
                print(f"stopping on {signal.Signals(signum).name} after step {step}: resume with the same command",
                      file=sys.stderr)
            return 128 + signum
        if hooks["step_sleep"]:
            time.sleep(hooks["step_sleep"])
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except (FatalError, ResumeError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 3 if isinstance(e, Diverged) else 2
    if dist.is_available() and dist.is_initialized():
        kept_until_exit = destroy_process_group()  # with gloo's teardown fix; every exit here is collective
    sys.exit(code)
