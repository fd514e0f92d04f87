"""
Attention heads: how alike they are, how much each one matters, and how many can go. For any checkpoint (ours,
build-nanogpt's, nanoGPT's) or OpenAI's GPT-2.

    python heads.py -c log/ --data-dir edu_fineweb10B --tokens 1e6     # the newest checkpoint of a run
    python heads.py -m gpt2 --data-dir edu_fineweb10B                   # OpenAI's weights (hub name or local dir)
    python heads.py -c log/demo --data-dir demo_shards --save-pruned 15%

Everything is measured on the first --tokens tokens of the val shards, in windows of --seq-len tokens (the
checkpoint's training length by default), as train_gpt2.py's val loss reads them.

- Redundancy: in each layer, the cosine similarity of every pair of heads, by two definitions.
  "attention": the two heads' attention distributions for the same query, compared query by query (query 0,
  which can only attend to itself, left out) and averaged. "output": the two heads' contributions to the
  residual stream (the head's output times its slice of c_proj), compared token by token and averaged. Both on
  the first --similarity-tokens tokens. The same numbers for a randomly initialised model of the same shape are
  the baseline: a pair above --threshold says something only where the random model stays below it.
- Importance (Michel, Levy and Neubig 2019, "Are Sixteen Heads Really Better than One?"): a mask xi_h = 1
  multiplies each head's output; I_h is the mean over batches of |dL/dxi_h|, then each layer's scores are divided
  by their L2 norm, as in the paper's code. Ablation: the val loss increase when that one head is masked.
- Pruning curve: 0%, 5%, ..., 50% of the heads masked, in increasing order of importance. Baselines: random
  orders (--random-draws, mean and std), the iterative order (importance recomputed with the pruned heads
  masked after each step) and the ablation order. Where each curve first passes +5% perplexity is printed.
- --save-pruned K%: a checkpoint without the K% least important heads: their q/k/v rows and c_proj columns are
  sliced out and GPTConfig.layer_heads holds each layer's count, so sample.py, hellaswag.py and the app load it.

--out gets results.json (RESULT_KEYS below says what each key holds), similarity.png, importance.png and
pruning.png.
"""

import argparse
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import checkpoint_step, load_checkpoint, model_from_checkpoint, resolve_checkpoint_path, save_checkpoint
from fineweb import count, get_tokenizer, list_shards, open_shard, save_json_atomically
from hardware import DTYPES, autocast, pick_device, pick_dtype
from model import GPT, flops_per_token

FRACTIONS = [i / 20 for i in range(11)]  # 0%, 5%, ..., 50% of the heads
PERPLEXITY_LIMIT = 0.05  # the +5% perplexity a pruning claim is usually read against
CURVES = ("importance", "iterative", "ablation", "random")
# Almost all of a small model's loss is its head: (tokens x n_embd) @ (n_embd x 50,304), then a softmax over 50,304.
# On a CPU the model's chunked loss does that 128 positions at a time (25 MB of logits rather than a whole batch's
# 100 MB written to memory and read back): measured 1.7x less CPU time per loss on the demo model.
LOSS_CHUNK_ROWS = 128
MAX_CPU_WORKERS = 4  # (mask, batch) pieces computed at once on a CPU (see split_threads_among_workers)

RESULT_KEYS = {
    "source": "the checkpoint file or Hugging Face model analysed",
    "step": "the checkpoint's training step (null for Hugging Face weights)",
    "config": "the model's GPTConfig fields",
    "data": "data_dir, shards, tokens (scored), seq_len, batch_size, similarity_tokens, ablation_tokens",
    "run": "device, dtype, seed, threshold, random_draws, torch version, seconds per phase",
    "loss": "val loss of the unpruned model, and its perplexity",
    "similarity": "{attention|output: {trained|random: [layer][head][head] mean cosine similarity}}",
    "similar_pairs": "{attention|output: [{layer, heads, similarity, random_max}]}: trained pairs above threshold; "
                     "random_max is the random model's largest pair similarity in that layer",
    "similarity_summary": "{attention|output: {trained|random: {pairs_above, mean, max, per_layer_mean, "
                          "per_layer_max}}} over the off-diagonal pairs",
    "importance": "raw: [layer][head] mean |dL/dmask|; normalised: each layer divided by its L2 norm",
    "ablation": "loss and loss_increase: [layer][head], that one head masked",
    "pruning": "fractions, heads_pruned, and per curve (importance, iterative, ablation, random): loss, "
               "perplexity, loss_change, perplexity_change (relative) per fraction, order ([layer, head] pruned "
               "first to last); random has mean and std lists and its draws",
    "crossing": "per curve: last_within (largest fraction with perplexity within +5% at it and every step "
                "before), first_above (the next fraction, or null) and their perplexity changes",
    "pruned_checkpoint": "null, or path, fraction, heads_removed, layer_heads, params and flops_per_token "
                         "before/after, val_loss (sliced model) and masked_val_loss",
}


# -----------------------------------------------------------------------------
# the model and the data


def load_model(args, device):
    """(model, source, step, training seq_len or None) from -c or -m."""
    if args.checkpoint:
        path = resolve_checkpoint_path(args.checkpoint)
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(path, device, checkpoint=checkpoint)
        train_args = checkpoint.get("args")
        seq_len = train_args.get("seq_len") if isinstance(train_args, dict) else None
        return model, path, checkpoint_step(checkpoint), seq_len
    return GPT.from_pretrained(args.model).to(device), args.model, None, None


def val_windows(data_dir, n_tokens, seq_len):
    """(N, seq_len + 1) windows at stride seq_len from the val shards in order: N * seq_len >= n_tokens scored
    tokens, or all the shards hold."""
    wanted, windows, used = math.ceil(n_tokens / seq_len), [], []
    for path in list_shards(data_dir, "val"):
        tokens = open_shard(path)
        n = min((len(tokens) - 1) // seq_len, wanted - len(windows))
        windows += [np.asarray(tokens[i * seq_len:(i + 1) * seq_len + 1], dtype=np.int64) for i in range(n)]
        used.append(os.path.basename(path))
        if len(windows) == wanted:
            break
    if not windows:
        raise ValueError(f"the val shards in {data_dir} hold fewer than {seq_len + 1} tokens: pass a smaller --seq-len")
    return torch.from_numpy(np.stack(windows)), used


def text_windows(path, n_tokens, seq_len):
    """The same windows from a text file, tokenized with the GPT-2 tokenizer."""
    with open(path, encoding="utf-8") as f:
        tokens = np.array(get_tokenizer().encode_ordinary(f.read()), dtype=np.int64)
    n = min((len(tokens) - 1) // seq_len, math.ceil(n_tokens / seq_len))
    if n < 1:
        raise ValueError(f"{path} has {len(tokens)} tokens, fewer than --seq-len {seq_len} + 1")
    return torch.from_numpy(np.stack([tokens[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)])), [path]


def batches(windows, batch_size):
    for i in range(0, len(windows), batch_size):
        rows = windows[i:i + batch_size]
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class Evaluator:
    """Val loss and mask gradients of one model on fixed windows (already on its device), each computed once per
    mask. `workers` (mask, batch) pieces are computed at a time, each in its own thread; the heavy ops release
    the GIL, so on a CPU with one torch thread per worker the cores stay busy without the per-op
    synchronisation of intra-op threads (see split_threads_among_workers)."""

    def __init__(self, model, windows, batch_size, device, dtype, workers=1):
        self.model, self.windows, self.batch_size, self.device, self.dtype = model, windows, batch_size, device, dtype
        self.workers = workers
        self.full_mask = head_presence(model.config).float().to(device)  # 1 for every head the model has
        self.known = {}  # (mask, windows) -> loss: the curves meet the same masks more than once
        self.known_gradients = {}  # (mask, windows) -> |dL/dmask|: the iterative order starts where importance did
        self.loss_chunk = LOSS_CHUNK_ROWS if device == "cpu" else 0  # 0: the whole logits at once, as on a GPU

    def key(self, head_mask, windows):
        return tuple((self.full_mask if head_mask is None else head_mask).flatten().tolist()), len(windows)

    def loss(self, head_mask=None, windows=None):
        """Mean cross-entropy over every target token of the windows, with an optional head mask."""
        return self.losses([head_mask], windows)[0]

    def losses(self, head_masks, windows=None, desc=None):
        """loss() for each mask. The ones not known yet are computed as (mask, batch) pieces, `workers` at a time
        (so that one mask alone still keeps every worker busy), with a progress bar titled desc if given."""
        windows = self.windows if windows is None else windows
        keys = [self.key(mask, windows) for mask in head_masks]
        todo = {key: mask for key, mask in zip(keys, head_masks) if key not in self.known}
        parts = list(batches(windows, self.batch_size))
        pieces = self.map(lambda piece: self.batch_loss(*piece), [(mask, *part) for mask in todo.values()
                                                                   for part in parts])
        with tqdm(total=len(set(keys)), initial=len(set(keys)) - len(todo), desc=desc, unit="mask",
                  disable=desc is None) as bar:
            for key in todo:
                total = 0.0
                for x, _ in parts:  # a mask's batches in order, whichever worker finished first
                    total += next(pieces) * x.size(0)
                self.known[key] = total / len(windows)
                bar.update()
        return [self.known[key] for key in keys]

    def batch_loss(self, head_mask, x, y):
        with torch.no_grad(), autocast(self.dtype, self.device):  # grad mode and autocast are per thread
            _, loss = self.model(x, y, head_mask=head_mask, loss_chunk=self.loss_chunk)
        return loss.double().item()

    def mask_gradient(self, head_mask=None, desc=None):
        """Mean over batches of |dL/dmask| at head_mask (all ones by default): Michel et al.'s importance. Its
        forward passes give the loss at head_mask too, which is kept."""
        mask = self.full_mask if head_mask is None else head_mask
        key = self.key(mask, self.windows)
        if key not in self.known_gradients:
            work = list(batches(self.windows, self.batch_size))
            results = list(tqdm(self.map(lambda batch: self.batch_gradient(mask, *batch), work), total=len(work),
                                desc=desc, unit="batch", disable=desc is None))
            self.known_gradients[key] = sum(gradient.abs() for gradient, _ in results) / len(results)
            total = sum(loss * x.size(0) for (_, loss), (x, _) in zip(results, work))
            self.known.setdefault(key, total / len(self.windows))
        return self.known_gradients[key]

    def batch_gradient(self, head_mask, x, y):
        """dL/dmask of one batch's mean loss, and that loss."""
        mask = head_mask.clone().requires_grad_(True)
        with torch.enable_grad(), autocast(self.dtype, self.device):
            _, loss = self.model(x, y, head_mask=mask, loss_chunk=self.loss_chunk)
        return torch.autograd.grad(loss, mask)[0], loss.double().item()

    def map(self, function, items):
        """function over items, in order; `workers` at a time."""
        if self.workers == 1:
            yield from map(function, items)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            yield from pool.map(function, items)

    def mask(self, heads):
        """The full mask with these (layer, head) pairs set to 0."""
        mask = self.full_mask.clone()
        for layer, head in heads:
            mask[layer, head] = 0
        return mask


def split_threads_among_workers(device):
    """How many pieces an Evaluator computes at once. On a CPU, the torch threads are split among up to
    MAX_CPU_WORKERS workers (a worker holds a forward's activations, and a gradient's) and torch's thread count is
    set to each one's share: a small model's ops are too short to split among threads, and on a busy machine
    threads that wait for each other at the end of every op mostly wait (measured on 2 cores at load 8-10: the
    same forwards took 17x longer on 2 threads than on 1). Elsewhere one worker."""
    if device != "cpu":
        return 1
    threads = torch.get_num_threads()
    workers = min(threads, MAX_CPU_WORKERS)
    torch.set_num_threads(threads // workers)
    return workers


def head_presence(config):
    """(n_layer, n_head) bool: True where a layer has that head (a pruned layer has only its first ones)."""
    counts = torch.tensor(config.heads_per_layer())
    return torch.arange(config.n_head)[None, :] < counts[:, None]


# -----------------------------------------------------------------------------
# redundancy: pairwise cosine similarities of heads


def head_similarity(model, windows, batch_size, device, dtype, desc=None):
    """{"attention", "output"}: (n_layer, n_head, n_head) mean cosine similarity of every pair of heads (see the
    top of the file). A layer's missing heads (pruned models) stay nan. desc: title of a progress bar (stderr)."""
    L, H = model.config.n_layer, model.config.n_head
    sums = {kind: torch.zeros(L, H, H, dtype=torch.float64) for kind in ("attention", "output")}
    counts = {"attention": 0, "output": 0}
    head_inputs, hooks = {}, []

    def keep_c_proj_input(layer):
        return lambda module, args: head_inputs.__setitem__(layer, args[0])

    def accumulate(layer):
        def hook(attn, args, output):
            nh, hs = attn.n_head, attn.head_size
            if nh == 0:
                return head_inputs.pop(layer, None)
            # the hook runs inside the forward's autocast, which would do these einsums in bf16 (8 bits): fp32 here
            with torch.autocast(attn.c_proj.weight.device.type, enabled=False):
                pattern = F.normalize(attn.attention[:, :, 1:, :].float(), dim=-1)  # (B, nh, T-1, S): no query 0
                sums["attention"][layer, :nh, :nh] += torch.einsum("bitk,bjtk->ij", pattern, pattern).double().cpu()
                B, T, _ = head_inputs[layer].shape
                per_head = head_inputs[layer].float().view(B, T, nh, hs)
                weight = attn.c_proj.weight.float().view(-1, nh, hs)  # (C, nh, hs): each head's columns
                contribution = F.normalize(torch.einsum("btnd,cnd->btnc", per_head, weight), dim=-1)
                sums["output"][layer, :nh, :nh] += torch.einsum("btic,btjc->ij", contribution,
                                                                contribution).double().cpu()
            attn.attention = None
            del head_inputs[layer]
        return hook

    for layer, block in enumerate(model.transformer.h):
        block.attn.keep_attention = True
        hooks.append(block.attn.c_proj.register_forward_pre_hook(keep_c_proj_input(layer)))
        hooks.append(block.attn.register_forward_hook(accumulate(layer)))
    try:
        with torch.no_grad():
            for x, _ in tqdm(batches(windows, batch_size), total=math.ceil(len(windows) / batch_size), desc=desc,
                             unit="batch", disable=desc is None):
                with autocast(dtype, device):
                    model(x, last_only=True)  # the hooks read the heads; no position's logits are needed
                counts["attention"] += x.size(0) * (x.size(1) - 1)
                counts["output"] += x.size(0) * x.size(1)
    finally:
        for hook in hooks:
            hook.remove()
        for block in model.transformer.h:
            block.attn.keep_attention, block.attn.attention = False, None
    absent = ~head_presence(model.config)
    result = {}
    for kind, total in sums.items():
        similarity = (total / max(counts[kind], 1)).float()
        similarity[absent[:, :, None] | absent[:, None, :]] = float("nan")
        result[kind] = similarity
    return result


def similarity_summary(similarity, threshold):
    """Statistics over each layer's off-diagonal pairs (i < j)."""
    H = similarity.size(-1)
    upper = torch.triu(torch.ones(H, H, dtype=torch.bool), diagonal=1)
    per_layer = [layer[upper & ~layer.isnan()] for layer in similarity]
    everything = torch.cat(per_layer) if per_layer else torch.zeros(0)
    stat = lambda values, fn: fn(values).item() if values.numel() else None  # noqa: E731
    return {
        "pairs_above": int((everything > threshold).sum()),
        "mean": stat(everything, torch.mean), "max": stat(everything, torch.max),
        "per_layer_mean": [stat(v, torch.mean) for v in per_layer],
        "per_layer_max": [stat(v, torch.max) for v in per_layer],
    }


def similar_pairs(trained, random_max, threshold):
    pairs = []
    for layer, matrix in enumerate(trained):
        for i in range(matrix.size(0)):
            for j in range(i + 1, matrix.size(0)):
                if matrix[i, j] > threshold:
                    pairs.append({"layer": layer, "heads": [i, j], "similarity": matrix[i, j].item(),
                                  "random_max": random_max[layer]})
    return sorted(pairs, key=lambda pair: -pair["similarity"])


# -----------------------------------------------------------------------------
# importance and pruning


def normalise_per_layer(scores, present):
    """Each layer's scores divided by their L2 norm (Michel et al.'s code); heads not present count as 0."""
    scores = torch.where(present, scores, torch.zeros_like(scores))
    norms = scores.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, scores / norms.clamp_min(1e-30), scores)


def ascending(scores, present):
    """The present heads as [(layer, head)], lowest score first (ties by layer, then head)."""
    heads = [(layer, head) for layer, head in zip(*torch.nonzero(present.cpu(), as_tuple=True))]
    heads = [(int(layer), int(head)) for layer, head in heads]
    return sorted(heads, key=lambda lh: (scores[lh].item(), lh))


def heads_to_prune(fraction, n_heads):
    return math.floor(fraction * n_heads + 0.5)  # the nearest count, halves up (round() would round 2.5 to 2)


def iterative_order(evaluator, present, counts, desc=None):
    """Prune to each count in turn, recomputing importance with the already pruned heads masked. Each step's
    gradient also gives the loss at that step, so the iterative curve is known but for its last point."""
    order = []
    steps = sorted({n for n in counts if n > 0})
    for n_pruned in tqdm(steps, desc=desc, unit="step", disable=desc is None):
        mask = evaluator.mask(order)
        remaining = present.clone()
        for layer, head in order:
            remaining[layer, head] = False
        scores = normalise_per_layer(evaluator.mask_gradient(mask).cpu(), remaining)
        order += ascending(scores, remaining)[:n_pruned - len(order)]
    return order


def curve(evaluator, order, counts, base_loss, desc=None):
    """Loss, perplexity and their relative changes with the first `count` heads of order masked, per count."""
    measured = iter(evaluator.losses([evaluator.mask(order[:n]) for n in counts if n > 0], desc=desc))
    losses = [next(measured) if n > 0 else base_loss for n in counts]
    return {
        "loss": losses, "perplexity": [math.exp(loss) for loss in losses],
        "loss_change": [loss / base_loss - 1 for loss in losses],
        "perplexity_change": [math.exp(loss - base_loss) - 1 for loss in losses],
        "order": [list(head) for head in order],
    }


def crossing(fractions, perplexity_change, limit=PERPLEXITY_LIMIT):
    """Where a pruning curve first leaves +limit perplexity."""
    above = next((i for i, change in enumerate(perplexity_change) if change > limit), None)
    within = (len(fractions) if above is None else above) - 1
    return {
        "last_within": fractions[within] if within >= 0 else None,
        "last_within_change": perplexity_change[within] if within >= 0 else None,
        "first_above": None if above is None else fractions[above],
        "first_above_change": None if above is None else perplexity_change[above],
    }


def sliced_model(model, keep):
    """A new GPT holding only the heads in keep[layer] (sorted head indices) of each layer: their q, k, v rows
    of c_attn and their columns of c_proj; config.layer_heads gives the new counts."""
    config = dataclasses.replace(model.config, layer_heads=[len(heads) for heads in keep])
    state = dict(model.state_dict())
    for layer, heads in enumerate(keep):
        attn, prefix = model.transformer.h[layer].attn, f"transformer.h.{layer}.attn."
        width, hs = attn.n_head * attn.head_size, attn.head_size
        columns = torch.tensor([h * hs + d for h in heads for d in range(hs)], dtype=torch.long)
        rows = torch.cat([columns + part * width for part in range(3)])  # c_attn's output is [q | k | v]
        for name, index, dim in (("c_attn.weight", rows, 0), ("c_attn.bias", rows, 0), ("c_proj.weight", columns, 1)):
            if prefix + name in state:
                state[prefix + name] = state[prefix + name].index_select(dim, index.to(state[prefix + name].device))
    pruned = GPT(config).to(model.lm_head.weight.device)
    pruned.load_state_dict(state)
    return pruned.eval().requires_grad_(False)


def without_heads(model, removed):
    """sliced_model without the (layer, head) pairs in removed."""
    return sliced_model(model, [[h for h in range(block.attn.n_head) if (layer, h) not in removed]
                                for layer, block in enumerate(model.transformer.h)])


def write_pruned_checkpoint(path, pruned, step, val_loss, info):
    """A checkpoint that checkpoint.load_model (sample.py, hellaswag.py, the app) loads; it holds no optimizer,
    so train_gpt2.py cannot resume it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint = {"model": pruned.state_dict(), "config": dataclasses.asdict(pruned.config), "step": step,
                  "val_loss": val_loss, "pruned": info}
    save_checkpoint(path, checkpoint)  # the one atomic writer (fsync, rename)


# -----------------------------------------------------------------------------
# pictures


def plot_similarity(similarity, path, threshold):
    from matplotlib.figure import Figure  # a bare Figure draws with Agg: no pyplot, no GUI
    rows = [(kind, which) for kind in ("attention", "output") for which in ("trained", "random")]
    L = similarity["attention"]["trained"].shape[0]
    fig = Figure(figsize=(1.9 * L + 1.4, 1.9 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), L, squeeze=False)
    for r, (kind, which) in enumerate(rows):
        for layer in range(L):
            ax = axes[r][layer]
            image = ax.imshow(similarity[kind][which][layer], vmin=-1 if kind == "output" else 0, vmax=1,
                              cmap="RdBu_r" if kind == "output" else "viridis")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}", fontsize=9)
            if layer == 0:
                ax.set_ylabel(f"{kind}\n{which} model", fontsize=9)
        fig.colorbar(image, ax=list(axes[r]), shrink=0.8, aspect=12)
    fig.suptitle(f"cosine similarity between heads (rows and columns: heads; threshold {threshold})", fontsize=10)
    fig.savefig(path, dpi=80)


def plot_importance(importance, ablation, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 0.45 * importance.shape[0] + 1.8), layout="constrained")
    for ax, values, title in zip(fig.subplots(1, 2), (importance, ablation),
                                 ("importance |dL/dmask| (normalised per layer)", "ablation: loss increase")):
        image = ax.imshow(values, cmap="magma", aspect="auto")
        ax.set_title(title, fontsize=10), ax.set_xlabel("head"), ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1])), ax.set_yticks(range(values.shape[0]))
        if values.size <= 256:
            for (layer, head), value in np.ndenumerate(values):
                if not np.isnan(value):
                    ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=8, color="tab:cyan")
        fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=80)


def plot_pruning(pruning, path, title):
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    percent = [100 * f for f in pruning["fractions"]]
    styles = {"importance": ("C0", "o"), "iterative": ("C2", "s"), "ablation": ("C1", "^")}
    for name, (color, marker) in styles.items():
        if pruning.get(name):
            ax.plot(percent, [100 * c for c in pruning[name]["perplexity_change"]], color=color, marker=marker,
                    label=f"{name} order")
    mean, std = (np.array(pruning["random"][key]) * 100 for key in ("perplexity_change_mean", "perplexity_change_std"))
    draws = pruning["random"]["draws"]
    ax.plot(percent, mean, color="grey", marker=".", label=f"random order (mean ± std, {len(draws)} draws; thin: each)")
    ax.fill_between(percent, mean - std, mean + std, color="grey", alpha=0.2)
    for draw in draws:
        ax.plot(percent, [100 * c for c in draw["perplexity_change"]], color="grey", linewidth=0.6, alpha=0.7)
    ax.axhline(100 * PERPLEXITY_LIMIT, color="red", linestyle="--", linewidth=1, label="+5% perplexity")
    ax.set_yscale("symlog", linthresh=10, linscale=2)  # linear to ±10%, logarithmic beyond
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in (-100, -50, -20, -10, -5, 0, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
                   if low <= t <= high])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+g}%" if value else "0"))
    ax.set_xlabel("heads pruned (%)"), ax.set_ylabel("val perplexity change (%)"), ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)


# -----------------------------------------------------------------------------
# the study


def as_list(tensor):
    """Nested lists for JSON, nan (absent heads) as null."""
    return [as_list(t) for t in tensor] if tensor.dim() else (None if math.isnan(tensor.item()) else tensor.item())


def run_study(args):
    timing, started = {}, time.time()

    def phase(name):
        nonlocal started
        timing[name] = round(time.time() - started, 2)
        started = time.time()

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    workers = split_threads_among_workers(device)
    torch.manual_seed(args.seed)
    model, source, step, train_seq_len = load_model(args, device)
    out = args.out or (os.path.join(os.path.dirname(source), f"heads_{step or 0:05d}") if args.checkpoint
                       else f"heads_{os.path.basename(args.model.rstrip('/'))}")
    model.eval().requires_grad_(False)  # only the mask needs gradients
    config = model.config
    seq_len = args.seq_len or min(train_seq_len or config.block_size, config.block_size)
    if seq_len > config.block_size:
        raise ValueError(f"--seq-len {seq_len} is longer than the model's block_size {config.block_size}")
    windows, shards = (text_windows(args.text_file, args.tokens, seq_len) if args.text_file
                       else val_windows(args.data_dir, args.tokens, seq_len))
    if windows.max().item() >= config.vocab_size:
        raise ValueError(f"the data holds token {windows.max().item()}, outside the model's vocabulary of "
                         f"{config.vocab_size}")
    windows = windows.to(device)
    n_sim = max(1, min(len(windows), math.ceil(args.similarity_tokens / seq_len)))
    n_ablation = max(1, min(len(windows), math.ceil((args.ablation_tokens or args.tokens) / seq_len)))
    evaluator = Evaluator(model, windows, args.batch_size, device, dtype, workers)
    present = head_presence(config)
    n_heads = int(present.sum())
    print(f"heads.py: {source}{'' if step is None else f' (step {step})'}: {config.n_layer} layers, "
          f"{n_heads} heads; {len(windows) * seq_len:,} val tokens at seq_len {seq_len}; {device} {dtype}", flush=True)

    # redundancy, and the same on a random model of this shape
    torch.manual_seed(args.seed)  # zero-initialised output projections would make every head's output 0
    random_config = dataclasses.replace(config, zero_init_proj=False) if getattr(config, "zero_init_proj", False) \
        else config
    random_model = GPT(random_config).to(device).eval().requires_grad_(False)
    similarity = {kind: {} for kind in ("attention", "output")}
    for which, m in (("trained", model), ("random", random_model)):
        for kind, values in head_similarity(m, windows[:n_sim], args.batch_size, device, dtype,
                                            desc=f"similarity, {which} model").items():
            similarity[kind][which] = values
    del random_model
    summary = {kind: {which: similarity_summary(similarity[kind][which], args.threshold) for which in similarity[kind]}
               for kind in similarity}
    pairs = {kind: similar_pairs(similarity[kind]["trained"], summary[kind]["random"]["per_layer_max"], args.threshold)
             for kind in similarity}
    phase("similarity")

    # importance (its forward passes give the unpruned loss too) and ablation
    raw = evaluator.mask_gradient(desc="importance").cpu()
    base_loss = evaluator.loss()
    importance = normalise_per_layer(raw, present)
    phase("importance")
    ablation_loss = torch.full((config.n_layer, config.n_head), float("nan"))
    ablation_base = evaluator.loss(windows=windows[:n_ablation]) if n_ablation < len(windows) else base_loss
    one_head = ascending(importance, present)
    one_head_losses = evaluator.losses([evaluator.mask([head]) for head in one_head], windows=windows[:n_ablation],
                                       desc="ablation, one head at a time")
    for head, loss in zip(one_head, one_head_losses):
        ablation_loss[head] = loss
    ablation_increase = ablation_loss - ablation_base
    phase("ablation")

    # pruning curves
    counts = [heads_to_prune(f, n_heads) for f in FRACTIONS]
    pruning = {"fractions": FRACTIONS, "heads_pruned": counts}
    pruning["importance"] = curve(evaluator, ascending(importance, present), counts, base_loss,
                                  desc="pruning curve, importance order")
    pruning["ablation"] = curve(evaluator, ascending(torch.nan_to_num(ablation_increase), present), counts, base_loss,
                                desc="pruning curve, ablation order")
    phase("pruning_importance_and_ablation")
    rng = np.random.default_rng(args.seed)
    all_heads = ascending(torch.zeros(present.shape), present)
    orders = [[all_heads[i] for i in rng.permutation(n_heads)] for _ in range(args.random_draws)]
    # every draw's masks in one call, so that the workers share them out
    evaluator.losses([evaluator.mask(order[:n]) for order in orders for n in counts if n > 0],
                     desc=f"pruning curves, {len(orders)} random orders")
    draws = [curve(evaluator, order, counts, base_loss) for order in orders]
    pruning["random"] = {"draws": draws}
    for key in ("loss", "perplexity", "loss_change", "perplexity_change"):
        values = np.array([draw[key] for draw in draws])
        pruning["random"][key + "_mean"] = values.mean(0).tolist()
        pruning["random"][key + "_std"] = values.std(0, ddof=1 if len(draws) > 1 else 0).tolist()
    phase("pruning_random")
    pruning["iterative"] = None
    if args.iterative:
        order = iterative_order(evaluator, present, counts, desc="pruning curve, iterative order (gradients)")
        pruning["iterative"] = curve(evaluator, order, counts, base_loss, desc="pruning curve, iterative order")
    phase("pruning_iterative")
    crossings = {name: crossing(FRACTIONS, pruning[name]["perplexity_change"]) for name in CURVES[:3] if pruning[name]}
    crossings["random"] = crossing(FRACTIONS, pruning["random"]["perplexity_change_mean"])

    pruned_checkpoint = None
    if args.save_pruned is not None:
        count = heads_to_prune(args.save_pruned, n_heads)
        removed = sorted(ascending(importance, present)[:count])
        masked_loss = evaluator.loss(evaluator.mask(removed))
        pruned = without_heads(model, set(removed))
        pruned_loss = Evaluator(pruned, windows, args.batch_size, device, dtype, workers).losses(
            [None], desc=f"save-pruned {round(100 * args.save_pruned)}%: the sliced model's loss")[0]
        path = os.path.join(out, f"pruned_{round(100 * args.save_pruned)}pct", f"model_{step or 0:05d}.pt")
        info = {"from": source, "fraction": args.save_pruned, "heads_removed": [list(h) for h in removed]}
        write_pruned_checkpoint(path, pruned, step, pruned_loss, info)
        pruned_checkpoint = {
            "path": path, "fraction": args.save_pruned, "heads_removed": [list(h) for h in removed],
            "layer_heads": pruned.config.heads_per_layer(),
            "params_before": model.num_params(), "params_after": pruned.num_params(),
            "flops_per_token_before": flops_per_token(config, seq_len),
            "flops_per_token_after": flops_per_token(pruned.config, seq_len),
            "val_loss": pruned_loss, "masked_val_loss": masked_loss,
        }
        phase("save_pruned")

    results = {
        "source": source, "step": step, "config": dataclasses.asdict(config),
        "data": {"data_dir": None if args.text_file else args.data_dir, "shards": shards,
                 "tokens": len(windows) * seq_len, "seq_len": seq_len, "batch_size": args.batch_size,
                 "similarity_tokens": n_sim * seq_len, "ablation_tokens": n_ablation * seq_len},
        "run": {"device": device, "dtype": dtype, "seed": args.seed, "threshold": args.threshold,
                "random_draws": args.random_draws, "torch": torch.__version__, "seconds": timing},
        "loss": {"loss": base_loss, "perplexity": math.exp(base_loss)},
        "similarity": {kind: {which: as_list(v) for which, v in per.items()} for kind, per in similarity.items()},
        "similar_pairs": pairs, "similarity_summary": summary,
        "importance": {"raw": as_list(torch.where(present, raw, float("nan"))), "normalised":
                       as_list(torch.where(present, importance, float("nan")))},
        "ablation": {"loss": as_list(ablation_loss), "loss_increase": as_list(ablation_increase)},
        "pruning": pruning, "crossing": crossings, "pruned_checkpoint": pruned_checkpoint,
    }
    assert set(results) == set(RESULT_KEYS)
    return results, out


def write_outputs(results, out):
    """results.json and the three pictures, drawn from it alone."""
    os.makedirs(out, exist_ok=True)
    save_json_atomically(os.path.join(out, "results.json"), results)
    array = lambda nested: np.array(nested, dtype=float)  # noqa: E731  (null -> nan)
    similarity = {kind: {which: array(v) for which, v in per.items()} for kind, per in results["similarity"].items()}
    plot_similarity(similarity, os.path.join(out, "similarity.png"), results["run"]["threshold"])
    plot_importance(array(results["importance"]["normalised"]), array(results["ablation"]["loss_increase"]),
                    os.path.join(out, "importance.png"))
    name = os.path.basename(results["source"].rstrip("/"))
    plot_pruning(results["pruning"], os.path.join(out, "pruning.png"),
                 f"pruning {name}: {results['data']['tokens']:,} val tokens, loss {results['loss']['loss']:.3f}")


def print_summary(results, out):
    threshold = results["run"]["threshold"]
    print(f"val loss {results['loss']['loss']:.4f} (perplexity {results['loss']['perplexity']:.2f})")
    print(f"redundancy: pairs of heads in one layer with cosine similarity > {threshold}")
    for kind, per in results["similarity_summary"].items():
        trained, random = per["trained"], per["random"]
        print(f"  {kind:9s}: trained {trained['pairs_above']:3d} pairs (mean {trained['mean']:.3f}, max "
              f"{trained['max']:.3f}) | random model {random['pairs_above']:3d} pairs (mean {random['mean']:.3f}, "
              f"max {random['max']:.3f})")
    importance = results["importance"]["normalised"]
    flat = sorted((v, l, h) for l, row in enumerate(importance) for h, v in enumerate(row) if v is not None)
    print("importance (normalised per layer): least " + ", ".join(f"L{l}H{h} {v:.3f}" for v, l, h in flat[:3])
          + " | most " + ", ".join(f"L{l}H{h} {v:.3f}" for v, l, h in flat[-3:]))
    pruning = results["pruning"]
    names = [name for name in CURVES if pruning[name]]
    print("pruning: val perplexity change\n  pruned  heads  " + "  ".join(f"{n:>14s}" for n in names))
    for i, fraction in enumerate(pruning["fractions"]):
        cells = [f"{100 * pruning[n]['perplexity_change'][i]:+13.1f}%" for n in names if n != "random"]
        mean, std = pruning["random"]["perplexity_change_mean"][i], pruning["random"]["perplexity_change_std"][i]
        cells.append(f"{100 * mean:+7.1f}±{100 * std:5.1f}%")
        print(f"  {100 * fraction:5.0f}%  {pruning['heads_pruned'][i]:5d}  " + "  ".join(cells))
    for name, cross in results["crossing"].items():
        within = "none" if cross["last_within"] is None else f"{100 * cross['last_within']:.0f}%"
        above = ("never above it up to 50%" if cross["first_above"] is None else
                 f"first above at {100 * cross['first_above']:.0f}% ({100 * cross['first_above_change']:+.1f}%)")
        print(f"+5% perplexity, {name} order: within it up to {within} of heads pruned; {above}")
    saved = results["pruned_checkpoint"]
    if saved:
        print(f"pruned checkpoint {saved['path']}: {len(saved['heads_removed'])} heads removed, heads per layer "
              f"{saved['layer_heads']}; parameters {saved['params_before']:,} -> {saved['params_after']:,} "
              f"({saved['params_after'] / saved['params_before'] - 1:+.1%}), training FLOPs/token "
              f"{saved['flops_per_token_before']:,} -> {saved['flops_per_token_after']:,} "
              f"({saved['flops_per_token_after'] / saved['flops_per_token_before'] - 1:+.1%}); val loss "
              f"{saved['val_loss']:.4f} (masked: {saved['masked_val_loss']:.4f})")
    print(f"wrote {out}/results.json, similarity.png, importance.png, pruning.png")


# -----------------------------------------------------------------------------
# command line


def percent(text):
    value = float(text.rstrip("%"))
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage between 0 and 100")
    return value / 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Attention-head redundancy, importance and pruning.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--checkpoint", help="a checkpoint file, or a run directory (its newest checkpoint)")
    source.add_argument("-m", "--model", help="OpenAI GPT-2 (gpt2 ... gpt2-xl) or a local Hugging Face directory")
    add = parser.add_argument
    add("--data-dir", default="edu_fineweb10B", help="directory of *val* shards (.npy or llm.c .bin)")
    add("--text-file", help="measure on this text file (GPT-2 tokenizer) instead of the val shards")
    add("--tokens", type=count, default=10**6, help="val tokens scored (e.g. 1e6)")
    add("--seq-len", type=int, help="tokens per window (default: the checkpoint's training seq_len, else block_size)")
    add("--batch-size", type=int, default=8, help="windows per forward; importance takes |grad| per batch")
    add("--similarity-tokens", type=count, default=2**16, help="tokens for the similarities (first of --tokens)")
    add("--ablation-tokens", type=count, help="tokens for the one-head ablations (default: all --tokens)")
    add("--threshold", type=float, default=0.85, help="list pairs of heads above this cosine similarity")
    add("--random-draws", type=count, default=3, help="random pruning orders (mean and std)")
    add("--iterative", action=argparse.BooleanOptionalAction, default=True,
        help="also the iterative order: importance recomputed after each 5%% step")
    add("--save-pruned", type=percent, metavar="K%", help="write a checkpoint without the K%% least important heads")
    add("--out", help="output directory (default: heads_STEP beside the checkpoint, or heads_MODEL)")
    add("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    add("--dtype", default="auto", choices=["auto", *DTYPES], help="autocast dtype (auto: bf16 on recent GPUs)")
    add("--seed", type=int, default=1337, help="seed of the random model and the random orders")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.seq_len is not None and args.seq_len < 2):
        raise ValueError("--batch-size must be positive and --seq-len at least 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    results, out = run_study(args)
    write_outputs(results, out)
    print_summary(results, out)
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
