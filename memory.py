"""
Fitting a model in GPU memory: sharded training states, activation checkpointing, the micro-batch probe, and a
memory model that says what fits before a GPU is rented. train_gpt2.py uses the first three, bench.py --memory
prints the fourth.

    --shard-optimizer   ZeRO-1: torch.distributed.optim.ZeroRedundancyOptimizer keeps 1/world_size of the AdamW
                        states on each rank; gradients are all-reduced by DDP as before, each rank updates its own
                        parameters and broadcasts them.
    --fsdp              FSDP2 (fully_shard, per block and at the root): parameters, gradients and optimizer states
                        are all sharded; each block's weights are all-gathered for its forward and backward.
    --activation-checkpointing
                        torch.utils.checkpoint (use_reentrant=False) around every block: only a block's input is
                        kept for backward, the rest is recomputed there.

Checkpoints stay one file of the usual format whatever the sharding: the full model state_dict and the optimizer
state of a plain torch.optim optimizer over model.parameters(), gathered on rank 0. So a sharded run resumes
unsharded, on another world size, and the other way round, and no other script needs to know.
"""

import contextlib
import dataclasses
import inspect

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "zero", "fsdp")  # plain DDP (or one process), --shard-optimizer, --fsdp


def pick_strategy(fsdp, shard_optimizer, dtype, world_size):
    """'ddp' (plain DDP, or one process), 'zero' (--shard-optimizer) or 'fsdp' (--fsdp); ValueError for a
    combination that cannot run. One process has nothing to shard: 'ddp' then, whatever was asked."""
    if fsdp and shard_optimizer:
        raise ValueError("--fsdp shards the optimizer states already: pass --fsdp or --shard-optimizer, not both")
    strategy = "fsdp" if fsdp else "zero" if shard_optimizer else "ddp"
    if strategy == "fsdp" and dtype == "fp16":
        raise ValueError("--fsdp with fp16 needs a sharded GradScaler, which train_gpt2.py does not have: use "
                         "--dtype bf16, or --shard-optimizer")
    if world_size == 1:
        return "ddp"
    return strategy


def strategy_name(strategy):
    return {"ddp": "DDP", "zero": "ZeRO-1 (sharded optimizer states)", "fsdp": "FSDP2 (fully sharded)"}[strategy]


# -----------------------------------------------------------------------------
# activation checkpointing


def checkpoint_blocks(model):
    """Recompute every block's activations in backward: the block's forward runs under torch.utils.checkpoint
    whenever gradients are being recorded (no_grad evaluation and generation run it plainly). The blocks are
    patched in place, so parameter names, and with them the checkpoints, do not change."""
    from torch.utils.checkpoint import checkpoint
    for block in model.transformer.h:
        def forward(*args, _forward=block.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        block.forward = forward
    return model


# -----------------------------------------------------------------------------
# sharding: FSDP2 wrapping, the ZeRO-1 optimizer, and the gradient sync of either


def import_fully_shard():
    """FSDP2's fully_shard: torch.distributed.fsdp from torch 2.6 on, torch.distributed._composable.fsdp in 2.4-2.5."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def fsdp_runs_on(device_type):
    """FSDP2 runs on CUDA with every supported torch; on CPU (gloo) only from torch 2.6, where it moved to
    torch.distributed.fsdp: 2.4's creates CUDA streams whatever the device."""
    import torch.distributed.fsdp as fsdp
    return device_type == "cuda" or hasattr(fsdp, "fully_shard")


def shard_model(model, device_type):
    """FSDP2: each block is its own unit (all-gathered for its forward, resharded after), the root holds the rest
    (embeddings, the tied lm_head, the final norm). The module is changed in place and keeps its parameter names."""
    if not fsdp_runs_on(device_type):
        raise ValueError(f"--fsdp on {device_type} needs torch 2.6 or newer (this is {torch.__version__}, whose FSDP2 "
                         f"needs CUDA): use --shard-optimizer, or a GPU")
    fully_shard = import_fully_shard()
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


ELEMENTWISE_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def shard_optimizer(optimizer, strategy):
    """The optimizer a strategy trains with. ZeRO-1 keeps every parameter whole on one rank, so any single
    torch.optim optimizer works under it, one that updates whole matrices (Muon) included. FSDP2 hands the optimizer
    1/world_size of each matrix, which only an elementwise update (AdamW, Adam, SGD) can take."""
    name = type(optimizer).__name__
    if strategy == "fsdp" and type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
        raise ValueError(f"--fsdp shards every matrix over the ranks, and {name} updates whole matrices: use "
                         f"--shard-optimizer, which keeps each parameter whole on one rank")
    if strategy != "zero":
        return optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"--shard-optimizer shards one torch.optim optimizer, not a {name}: run without it")
    return zero_optimizer(optimizer)


def zero_optimizer(optimizer):
    """The same optimizer (class, parameter groups, hyperparameters) as ZeRO-1: each rank keeps the states of
    its own 1/world_size of the parameters."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"}
    groups = [{k: v for k, v in group.items() if k not in defaults or v != defaults[k]}
              for group in optimizer.param_groups]
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **defaults)


@contextlib.contextmanager
def no_grad_sync(model):
    """Accumulate gradients locally in this micro-step (DDP's no_sync, FSDP2's set_requires_gradient_sync)."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(model, max_norm):
    """The global gradient norm before clipping, as a plain tensor (FSDP2 returns a replicated DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# -----------------------------------------------------------------------------
# checkpoints: one file in the plain format, whatever the sharding


def param_index(model, optimizer):
    """{name: index} of the parameters in a plain optimizer's state_dict (the order of its parameter groups).
    A tied parameter answers to each of its names."""
    index = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    return {name: index[id(p)] for name, p in model.named_parameters(remove_duplicate=False) if id(p) in index}


def full_state(model, optimizer, strategy):
    """(model state_dict, optimizer state_dict) in the plain, unsharded format, on rank 0; (None, None) on the
    other ranks. Every rank must call it (the sharded strategies gather)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        by_name = get_optimizer_state_dict(model, optimizer, options=options)
        if rank != 0:
            return None, None
        index = param_index(model, optimizer)
        optimizer_state = dict(
            state={index[name]: state for name, state in by_name["state"].items()},
            param_groups=[{**group, "params": [index[name] for name in group["params"]]}
                          for group in by_name["param_groups"]])
        return model_state, optimizer_state
    if strategy == "zero":
        optimizer.consolidate_state_dict(to=0)
        if rank != 0:
            return None, None
        return model.state_dict(), optimizer.state_dict()
    if rank != 0:
        return None, None
    return model.state_dict(), optimizer.state_dict()


def steps_onto_the_device(optimizer):
    """ZeroRedundancyOptimizer.load_state_dict puts every 0-dim state (AdamW's step) on the CPU, which the fused
    and capturable AdamW kernels refuse ("Expected all tensors to be on the same device", pytorch#124133): put
    them back beside their parameters, in fp32, as torch.optim's own load does for those groups."""
    for group in optimizer.param_groups:
        if not (group.get("fused") or group.get("capturable")):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[p]["step"] = step.to(p.device, torch.float32)


def load_optimizer_state(model, optimizer, state, strategy):
    """Load a plain optimizer state_dict (from any strategy and world size): each rank keeps its own shard."""
    if strategy != "fsdp":
        optimizer.load_state_dict(state)  # ZeroRedundancyOptimizer takes the full state and keeps its partition
        if strategy == "zero":
            steps_onto_the_device(optimizer.optim)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    name_of = {}
    for name, i in param_index(model, optimizer).items():
        name_of.setdefault(i, name)  # the first name of a tied parameter, as named_parameters() gives it
    by_name = dict(state={name_of[i]: s for i, s in state["state"].items()},
                   param_groups=[{**group, "params": [name_of[i] for i in group["params"]]}
                                 for group in state["param_groups"]])
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


# -----------------------------------------------------------------------------
# measured memory per rank


def local_bytes(tensor):
    """Bytes this rank holds for a tensor (its shard, for a DTensor)."""
    tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return tensor.numel() * tensor.element_size()


def optimizer_states(optimizer):
    """The optimizer states this rank holds: a ZeroRedundancyOptimizer's local optimizer's, or the optimizer's."""
    local = getattr(optimizer, "optim", optimizer)
    return [v for state in local.state.values() for v in state.values() if torch.is_tensor(v)]


def measured_memory(model, optimizer, device):
    """Bytes this rank holds now: weights, gradients, optimizer states (tensors counted directly), and on CUDA
    the allocator's peak, which also holds activations, communication buffers and DDP's gradient buckets."""
    params = list(model.parameters())
    sizes = dict(weights=sum(local_bytes(p) for p in params),
                 grads=sum(local_bytes(p.grad) for p in params if p.grad is not None),
                 optimizer=sum(local_bytes(t) for t in optimizer_states(optimizer)))
    if device.startswith("cuda"):
        sizes["peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return sizes


def format_memory(sizes):
    return ", ".join(f"{name.replace('_', ' ')} {value / 2**20:,.1f} MiB" for name, value in sizes.items())


def memory_report(model, optimizer, device, world_size):
    """One line per rank of what it holds (weights, gradients, optimizer states; the peak on CUDA). Every rank
    calls it (the sizes are gathered); rank 0 prints the lines."""
    sizes = [measured_memory(model, optimizer, device)]
    if world_size > 1:
        sizes = [None] * world_size
        dist.all_gather_object(sizes, measured_memory(model, optimizer, device))
    return [f"memory rank {rank}: {format_memory(rank_sizes)} (measured after the first step)"
            for rank, rank_sizes in enumerate(sizes)]


# -----------------------------------------------------------------------------
# --batch-size auto: the largest micro-batch that fits


class OutOfMemory(Exception):
    """Raised by a probe when a size does not fit (torch.cuda.OutOfMemoryError on a GPU; the tests use it)."""


def divisors_descending(n, largest=None):
    return [d for d in range(min(n, largest or n), 0, -1) if n % d == 0]


def fallback_micro_batch(rows_per_rank, default):
    """--batch-size auto with no GPU to probe: the default, or its largest divisor of the rows per rank."""
    return max(divisors_descending(rows_per_rank, default) or [default])


def find_micro_batch(rows_per_rank, fits, largest=None):
    """The largest micro-batch B that divides rows_per_rank (rows of the global batch each rank processes per
    step, so that the global batch, and with it the losses, stay the same) and for which fits(B) is True,
    trying divisors from the largest down. Returns (B, [(tried B, reason it was rejected), ...])."""
    rejected = []
    for batch_size in divisors_descending(rows_per_rank, largest):
        ok, reason = fits(batch_size)
        if ok:
            return batch_size, rejected
        rejected.append((batch_size, reason))
    raise OutOfMemory(f"not even a micro-batch of 1 fits ({rejected[-1][1]})")


def cuda_probe(model, optimizer, seq_len, vocab_size, device, forward_backward, extra_bytes=0, passes=2):
    """fits(B) for find_micro_batch on a GPU: `passes` runs of forward_backward(x, y), the training micro-step
    itself (train_gpt2.forward_backward: its autocast, its chunked loss), on B random rows of the real model, with
    the optimizer states this rank will hold reserved first (AdamW's are created at the first step). Nothing is
    updated; the gradients are dropped, and a private generator leaves the training RNG untouched."""
    generator = torch.Generator(device=device).manual_seed(0)
    state_bytes = 2 * sum(local_bytes(p) for group in getattr(optimizer, "optim", optimizer).param_groups
                          for p in group["params"])  # AdamW: exp_avg and exp_avg_sq, fp32 like the weights
    state_bytes += extra_bytes  # what else the real step holds and a bare forward/backward does not (DDP's buckets)

    def fits(batch_size):
        reserve = None
        try:
            reserve = torch.empty(state_bytes, dtype=torch.uint8, device=device)
            for _ in range(passes):
                x = torch.randint(0, vocab_size, (batch_size, seq_len), device=device, generator=generator)
                forward_backward(x, x)
            torch.cuda.synchronize(device)
            return True, "fits"
        except torch.cuda.OutOfMemoryError:
            return False, "out of memory"
        finally:
            del reserve
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return fits


def auto_micro_batch(model, optimizer, strategy, config, total_batch_size, seq_len, dtype, activation_checkpointing,
                     world_size, device, forward_backward):
    """--batch-size auto on a GPU: (the micro-batch train_gpt2.py runs with, a line saying why). Plain DDP and
    ZeRO probe the real model on each rank (no collectives: every rank can fail alone), and the ranks take the
    smallest choice. FSDP's forward gathers weights from every rank, so a rank running out of memory alone would
    leave the others waiting: there the memory model chooses, against the GPU's total memory."""
    rows_per_rank = total_batch_size // (seq_len * world_size)
    if strategy == "fsdp":
        total = torch.cuda.get_device_properties(device).total_memory
        predicted = largest_micro_batch(config, strategy, world_size, seq_len, total, dtype, activation_checkpointing)
        batch_size = max(divisors_descending(rows_per_rank, max(predicted, 1)))
        reason = f"the memory model's largest micro-batch for {total / 2**30:.0f} GiB is {predicted}"
    else:
        ddp_buckets = 4 * sum(p.numel() for p in model.parameters()) if world_size > 1 else 0
        fits = cuda_probe(model, optimizer, seq_len, config.vocab_size, device, forward_backward,
                          extra_bytes=ddp_buckets)
        batch_size, rejected = find_micro_batch(rows_per_rank, fits)
        tried = ", ".join(f"{b} ({why})" for b, why in rejected)
        reason = f"2 forward/backward passes fit{'; tried first: ' + tried if tried else ''}"
    if world_size > 1:
        chosen = torch.tensor(batch_size, device=device)
        dist.all_reduce(chosen, op=dist.ReduceOp.MIN)
        batch_size = int(chosen.item())  # a divisor on every rank, so the smallest is one too
    note = (f"batch size auto: {batch_size} rows per micro-step, the largest divisor of the {rows_per_rank} rows "
            f"each rank takes per step that fits: {reason}; the global batch stays {total_batch_size} tokens")
    return batch_size, note


# -----------------------------------------------------------------------------
# the memory model


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes per rank, for one strategy at one micro-batch."""
    strategy: str
    activation_checkpointing: bool
    weights: int
    grads: int
    optimizer: int
    activations: int  # saved for backward, plus the loss's logits workspace, at the micro-batch asked
    buffers: int  # communication: DDP's gradient buckets, FSDP's all-gathered and reduce-scattered blocks

    @property
    def total(self):
        return self.weights + self.grads + self.optimizer + self.activations + self.buffers


def parameter_counts(config):
    """(all parameters, one block's, the nn.Linear weights'), counted on a meta-device model (no memory), so every
    architecture model.py builds is counted as it is built."""
    from model import GPT
    with torch.device("meta"):
        model = GPT(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return model.num_params(), sum(p.numel() for p in model.transformer.h[0].parameters()), linear


LOSS_CHUNK_ELEMENTS = 2**26  # rows x vocab of one chunk of the CUDA training loss (train_gpt2.loss_chunk_rows)


def cuda_loss_is_chunked(dtype):
    """CUDA training's loss: chunked, except under fp16 (the plain one; train_gpt2.loss_chunk_rows says why). The
    one place of this rule: the training step and the memory model both read it."""
    return dtype != "fp16"


def saved_activation_bytes(config, batch_size, seq_len, dtype="bf16", activation_checkpointing=False,
                           chunked_loss=False):
    """Bytes autograd keeps for backward after one micro-batch's forward, for this repository's GPT-2 layout (a
    4 x n_embd GELU MLP; other model.py architectures are counted for their parameters, not their activations).
    Per block and token (C = n_embd, flash attention, no dropout): the fp32 residual stream into ln_1 and ln_2
    (2 x 4C bytes), and in the autocast dtype ln_1's output, q k v, the attention output and its contiguous copy,
    ln_2's output (7C elements), the MLP's fc and gelu outputs (8C): 8C + 15C x 2 = 38C bytes in bf16, 68C in
    fp32. With activation checkpointing a block keeps only its input (4C bytes). The head keeps ln_f's input
    (4C) and output (C in the autocast dtype) and the fp32 log-probabilities of the cross-entropy (4V bytes).
    Under bf16 autocast the matmuls also keep bf16 copies of their weights (2 bytes per matmul weight).
    chunked_loss (model.ChunkedCrossEntropy, CUDA): the loss makes its gradients in the forward pass and keeps
    those instead: the fp32 gradient of ln_f's output (4C per token) and of the head's weight (4VC in all); no
    log-probabilities, and no low-precision copy of the head's weight."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    low = 4 if dtype == "fp32" else 2
    per_block = 2 * 4 * C + 15 * C * low
    blocks = L * 4 * C if activation_checkpointing else L * per_block
    head = 4 * C + 4 * C if chunked_loss else 4 * C + C * low + 4 * V
    weight_copies = 0
    if dtype != "fp32":
        matmul_weights = 0 if activation_checkpointing else parameter_counts(config)[2] - V * C
        weight_copies = 2 * (matmul_weights + (0 if chunked_loss else V * C))
    head_weight_grad = 4 * V * C if chunked_loss else 0
    return batch_size * seq_len * (blocks + head) + weight_copies + head_weight_grad


def activation_bytes(config, batch_size, seq_len, dtype="bf16", activation_checkpointing=False, chunked_loss=False):
    """The activation part of the peak: what is saved for backward, plus what is live on top of it at the worst
    moment: with checkpointing, one block's full set while it is recomputed; and for the plain loss, at the start
    of backward the logits' gradient and the fp32 logits (2 x 4V bytes per token). The chunked loss has no such
    per-token term: while it runs, ln_f's output (4C per token) and one chunk's logits, fp32 log-probabilities
    (made into the scaled gradient in place) and its low-precision copy (LOSS_CHUNK_ELEMENTS x (2 x low + 4)), plus
    a head-weight-sized product and its fp32 copy (VC x (low + 4))."""
    saved = saved_activation_bytes(config, batch_size, seq_len, dtype, activation_checkpointing, chunked_loss)
    C, V = config.n_embd, config.vocab_size
    low = 4 if dtype == "fp32" else 2
    recompute = (2 * 4 * C + 15 * C * low) if activation_checkpointing else 0
    if not chunked_loss:
        return saved + batch_size * seq_len * (recompute + 2 * 4 * V)
    workspace = LOSS_CHUNK_ELEMENTS * (2 * low + 4) + V * C * (low + 4)
    return saved + batch_size * seq_len * (recompute + 4 * C) + workspace


def estimate(config, strategy, world_size, batch_size, seq_len, dtype="bf16", activation_checkpointing=False,
             chunked_loss=None):
    """The memory model: bytes per rank for weights, grads, optimizer states (AdamW, fp32 master weights),
    activations and communication buffers. Weights and states are fp32 whatever the autocast dtype.
    chunked_loss None: as CUDA training runs (cuda_loss_is_chunked); False: the plain loss (CPU, fp16)."""
    chunked_loss = cuda_loss_is_chunked(dtype) if chunked_loss is None else chunked_loss
    (N, per_block, _), W = parameter_counts(config), world_size
    blocks_gathered = 2 * 4 * per_block  # FSDP: the block being computed and the one prefetched
    if strategy == "fsdp":
        root = 4 * (N - config.n_layer * per_block)  # embeddings, lm_head, ln_f: gathered throughout
        weights, grads, optimizer = 4 * N // W, 4 * N // W, 8 * N // W
        buffers = (root + 2 * blocks_gathered) if W > 1 else 0  # all-gathered weights; unsharded grads to scatter
    else:
        weights, grads = 4 * N, 4 * N
        optimizer = 8 * N // W if strategy == "zero" else 8 * N
        buffers = 4 * N if W > 1 else 0  # DDP's buckets: a second copy of the gradients
    activations = activation_bytes(config, batch_size, seq_len, dtype, activation_checkpointing, chunked_loss)
    return MemoryEstimate(strategy, activation_checkpointing, weights, grads, optimizer, activations, buffers)


RESERVED_BYTES = 1 * 2**30  # CUDA context, cuBLAS workspaces, compiled kernels: not seen by the allocator
FRAGMENTATION = 0.10  # the caching allocator's slack: keep 10% of the rest free


def usable_bytes(gpu_bytes):
    return (gpu_bytes - RESERVED_BYTES) * (1 - FRAGMENTATION)


def largest_micro_batch(config, strategy, world_size, seq_len, gpu_bytes, dtype="bf16",
                        activation_checkpointing=False, limit=1024):
    """The largest micro-batch whose estimate fits in the usable part of gpu_bytes (0: none fits), for CUDA
    training's loss (chunked unless fp16)."""
    chunked = cuda_loss_is_chunked(dtype)
    fixed = estimate(config, strategy, world_size, 0, seq_len, dtype, activation_checkpointing, chunked).total
    per_row = activation_bytes(config, 1, seq_len, dtype, activation_checkpointing, chunked) - \
        activation_bytes(config, 0, seq_len, dtype, activation_checkpointing, chunked)
    room = usable_bytes(gpu_bytes) - fixed
    return 0 if room < per_row else min(limit, int(room // per_row))
