"""
memory.py and the train_gpt2.py flags it serves: --shard-optimizer (ZeRO-1) and --fsdp (FSDP2) give plain DDP's
losses (2 gloo ranks on CPU) and write plain one-file checkpoints that resume on any strategy and world size;
--activation-checkpointing gives the same losses and gradients; --batch-size auto's search; the memory model
against tensors measured on CPU.
"""

import contextlib
import copy
import functools
import os
import shutil
import types

import pytest
import torch
import torch.nn.functional as F

import memory
import train_gpt2
from checkpoint import load_checkpoint, model_from_checkpoint
from model import GPT, GPTConfig, chunked_cross_entropy
from test_train_gpt2 import TINY, TORCHRUN, data_dir, read_log, reference, run  # noqa: F401 (fixtures)


def train_losses(log_dir, first=0):
    return {step: loss for step, loss in read_log(log_dir)["train"].items() if step >= first}


def assert_close_losses(log_a, log_b, first=0, tolerance=1e-5):
    a, b = train_losses(log_a, first), train_losses(log_b, first)
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=tolerance), step


FSDP_ON_CPU = memory.fsdp_runs_on("cpu")
needs_fsdp = pytest.mark.skipif(not FSDP_ON_CPU, reason=f"torch {torch.__version__}'s FSDP2 needs CUDA")


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory, data_dir):
    """The reference's 12 steps on 2 ranks, run on first use: ZeRO-1, and FSDP2 with activation checkpointing."""
    flags = dict(zero=["--shard-optimizer"], fsdp=["--fsdp", "--activation-checkpointing"])
    runs = {}

    def get(name):
        if name not in runs:
            log_dir = str(tmp_path_factory.mktemp(name))
            result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY + flags[name], torchrun=TORCHRUN)
            runs[name] = dict(log_dir=log_dir, stdout=result.stdout)
        return runs[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero", pytest.param("fsdp", marks=needs_fsdp)])
def test_sharded_training_matches_the_unsharded_run(sharded_runs, reference, name):
    sharded = sharded_runs(name)
    assert_close_losses(sharded["log_dir"], reference["log_dir"])
    assert read_log(sharded["log_dir"])["val"] == reference["log"]["val"]
    assert "memory rank 0: weights" in sharded["stdout"] and "memory rank 1: weights" in sharded["stdout"]
    # one plain file: the full model without prefixes, and an optimizer state a plain AdamW loads
    plain, ours = (load_checkpoint(os.path.join(d, "model_00012.pt"))
                   for d in (reference["log_dir"], sharded["log_dir"]))
    assert ours["model"].keys() == plain["model"].keys()
    for key in plain["model"]:
        assert torch.allclose(ours["model"][key], plain["model"][key], atol=1e-4), key
    assert ours["optimizer"]["param_groups"] == plain["optimizer"]["param_groups"]
    assert ours["optimizer"]["state"].keys() == plain["optimizer"]["state"].keys()
    model = model_from_checkpoint(os.path.join(sharded["log_dir"], "model_00012.pt"))  # what sample.py etc. do
    model.configure_optimizers(0.1, 1e-3, "cpu").load_state_dict(ours["optimizer"])


def resume_from(tmp_path, checkpoint, data_dir, flags=(), torchrun=None):
    log_dir = str(tmp_path)
    shutil.copy(checkpoint, log_dir)
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY + list(flags), torchrun=torchrun)
    assert "resuming from" in result.stdout
    return log_dir


@pytest.mark.slow
@needs_fsdp
def test_sharded_checkpoint_resumes_in_one_process(tmp_path, data_dir, sharded_runs, reference):
    """FSDP on 2 ranks -> one process without sharding: the uninterrupted run's losses."""
    log_dir = resume_from(tmp_path, os.path.join(sharded_runs("fsdp")["log_dir"], "model_00004.pt"), data_dir)
    assert_close_losses(log_dir, reference["log_dir"], first=4)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--shard-optimizer", pytest.param("--fsdp", marks=needs_fsdp)])
def test_unsharded_checkpoint_resumes_sharded_on_two_ranks(tmp_path, data_dir, reference, flag):
    log_dir = resume_from(tmp_path, os.path.join(reference["log_dir"], "model_00004.pt"), data_dir, [flag], TORCHRUN)
    assert_close_losses(log_dir, reference["log_dir"], first=4)


@pytest.mark.slow
@needs_fsdp
def test_zero_checkpoint_resumes_under_fsdp_exactly(tmp_path, data_dir, sharded_runs):
    """Same world size, another sharding: the state goes through the plain format without loss, so the losses
    are those of the ZeRO run itself, to the printed digit."""
    zero = sharded_runs("zero")
    log_dir = resume_from(tmp_path, os.path.join(zero["log_dir"], "model_00008.pt"), data_dir, ["--fsdp"], TORCHRUN)
    assert train_losses(log_dir, 8) == train_losses(zero["log_dir"], 8)


def test_fsdp_where_this_torch_cannot_run_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(memory, "fsdp_runs_on", lambda device_type: False)  # torch 2.4's FSDP2 on a CPU
    with pytest.raises(ValueError, match=r"^--fsdp on cpu needs torch 2.6 or newer .*use --shard-optimizer, or a GPU$"):
        memory.shard_model(GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)), "cpu")


def test_fsdp_refuses_an_optimizer_that_updates_whole_matrices():
    class Muon(torch.optim.SGD):  # stands in for an optimizer that orthogonalizes each matrix
        pass
    params = [torch.nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match="^--fsdp shards every matrix over the ranks, and Muon updates whole"):
        memory.shard_optimizer(Muon(params, lr=0.1), "fsdp")
    adamw = torch.optim.AdamW(params)
    assert memory.shard_optimizer(adamw, "fsdp") is adamw and memory.shard_optimizer(adamw, "ddp") is adamw
    with pytest.raises(ValueError, match="^--shard-optimizer shards one torch.optim optimizer, not a list"):
        memory.shard_optimizer([adamw, adamw], "zero")


def test_fsdp_and_shard_optimizer_together_is_one_line_error(tmp_path, data_dir):
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path), "--fsdp", "--shard-optimizer"] + TINY,
                 expect_rc=2)
    assert result.stderr.strip().splitlines() == [
        "error: --fsdp shards the optimizer states already: pass --fsdp or --shard-optimizer, not both"]


def test_batch_size_auto_on_cpu_keeps_the_default_divisor(tmp_path, data_dir):
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ["--batch-size", "auto",
                 "--max-steps", "1", "--eval-every", "0", "--checkpoint-every", "0"])
    # 256 tokens / 32 = 8 rows per step; the default 64 does not divide them, its largest divisor 8 does
    assert "batch size auto: 8, the default 64 or its largest divisor of the 8 rows" in result.stdout
    assert "8 x 32 x 1 ranks x 1 accumulation steps" in result.stdout


# -----------------------------------------------------------------------------
# activation checkpointing


def tiny_config(**overrides):
    return GPTConfig(**{**dict(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64), **overrides})


def loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, x)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    checkpointed = memory.checkpoint_blocks(copy.deepcopy(model))
    x = torch.randint(0, 512, (4, 64))
    loss, grads = loss_and_grads(model, x)
    checkpointed_loss, checkpointed_grads = loss_and_grads(checkpointed, x)
    assert torch.equal(loss, checkpointed_loss)
    assert grads.keys() == checkpointed_grads.keys()
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=0, atol=1e-7, msg=name)
    assert checkpointed.state_dict().keys() == model.state_dict().keys()  # checkpoints are unchanged
    with torch.no_grad():  # evaluation and generation run the blocks plainly
        assert torch.equal(checkpointed(x)[0], model(x)[0])


# -----------------------------------------------------------------------------
# --batch-size auto: the search, with a stand-in for out-of-memory


def test_micro_batch_search_keeps_the_largest_divisor_that_fits():
    tried = []

    def fits(batch_size):  # a GPU on which 12 rows or fewer fit
        tried.append(batch_size)
        return (True, "fits") if batch_size <= 12 else (False, "out of memory")
    batch_size, rejected = memory.find_micro_batch(64, fits)
    assert batch_size == 8  # 12 fits but does not divide 64: the global batch must not change
    assert tried == [64, 32, 16, 8] and rejected == [(64, "out of memory"), (32, "out of memory"),
                                                     (16, "out of memory")]
    assert memory.find_micro_batch(48, fits)[0] == 12
    with pytest.raises(memory.OutOfMemory, match="not even a micro-batch of 1"):
        memory.find_micro_batch(8, lambda b: (False, "out of memory"))


def test_probe_reports_an_out_of_memory_error_as_not_fitting(monkeypatch):
    """cuda_probe's fits() turns torch.cuda.OutOfMemoryError into (False, reason), run here with a stand-in
    model that raises it above 4 rows and the CUDA calls stubbed."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, y, loss_chunk=0):
            if x.size(0) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
            return None, (self.weight * x.float()).sum()
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters())
    for name in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    step = functools.partial(train_gpt2.forward_backward, model, autocast=contextlib.nullcontext(), loss_chunk=0,
                             grad_accum_steps=1)
    fits = memory.cuda_probe(model, optimizer, 8, 16, "cpu", step)
    assert memory.find_micro_batch(16, fits) == (4, [(16, "out of memory"), (8, "out of memory")])
    assert model.weight.grad is None and not optimizer.state  # nothing trained, nothing kept


def test_the_probe_runs_the_training_micro_step_with_the_cuda_loss_chunk():
    """--batch-size auto sizes B for what CUDA training runs: train_gpt2.forward_backward with the chunked loss
    (loss_chunk_rows on CUDA), not a bare model(x, x) with the full logits, which would pick a smaller B."""
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    step = train_gpt2.micro_step_probe(GPT(config), contextlib.nullcontext(), config, "cuda", "bf16")
    assert step.func is train_gpt2.forward_backward
    assert step.keywords["loss_chunk"] == train_gpt2.loss_chunk_rows(64, "cuda", "bf16") == 2**26 // 64
    fp16 = train_gpt2.micro_step_probe(GPT(config), contextlib.nullcontext(), config, "cuda", "fp16")
    assert fp16.keywords["loss_chunk"] == 0  # fp16 trains on the plain loss: the probe sizes B for that


def test_zero_resume_puts_adamws_steps_back_beside_their_parameters():
    """ZeroRedundancyOptimizer.load_state_dict leaves AdamW's 0-dim steps on the CPU; fused AdamW on CUDA then
    fails at its first step. A meta-device parameter stands in for a CUDA one: the step follows it, in fp32, for
    fused and capturable groups only (the plain for-loop AdamW keeps its CPU step, as torch.optim does)."""
    fused, plain = torch.nn.Parameter(torch.zeros(2, device="meta")), torch.nn.Parameter(torch.zeros(2, device="meta"))
    optimizer = types.SimpleNamespace(param_groups=[{"params": [fused], "fused": True},
                                                    {"params": [plain], "fused": None, "capturable": False}],
                                      state={fused: {"step": torch.tensor(7.0)}, plain: {"step": torch.tensor(7.0)}})
    memory.steps_onto_the_device(optimizer)
    assert optimizer.state[fused]["step"].device.type == "meta" and optimizer.state[fused]["step"].dtype == torch.float32
    assert optimizer.state[plain]["step"].device.type == "cpu"


def test_fp16_trains_on_the_plain_loss_because_the_chunked_one_loses_its_gradients():
    """The chunked loss makes its gradients in the forward pass, (softmax - onehot) / n_targets cast to the autocast
    dtype, before GradScaler could scale them; in fp16 nearly all of a large vocab's entries round to 0. Shown
    here on CPU fp16 autocast, against the fp32 loss: the chunked fp16 gradient of the head is off by ~10%, which
    is why loss_chunk_rows gives fp16 the plain loss (where the scaled loss keeps them; the same check within 1%)."""
    torch.manual_seed(0)
    n, dim, vocab = 4096, 16, 8192
    h = (torch.randn(n, dim) + 2).requires_grad_()
    weight = (0.1 * torch.randn(vocab, dim)).requires_grad_()
    targets = torch.randint(0, 256, (n,))
    reference = torch.autograd.grad(F.cross_entropy(h @ weight.t(), targets), weight)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        chunked = torch.autograd.grad(chunked_cross_entropy(h, weight, targets, 1024), weight)[0]
        scale = 2.0 ** 16  # what GradScaler multiplies the plain loss by before backward
        plain = torch.autograd.grad(scale * F.cross_entropy((h @ weight.t()).float(), targets), weight)[0] / scale
    error = lambda grad: ((grad.float() - reference).norm() / reference.norm()).item()
    assert error(plain) < 0.01 < 0.05 < error(chunked)
    assert train_gpt2.loss_chunk_rows(vocab, "cuda", "fp16") == 0 < train_gpt2.loss_chunk_rows(vocab, "cuda", "bf16")


# -----------------------------------------------------------------------------
# the memory model against measured tensors


def measure_step(config, batch_size, seq_len, dtype, activation_checkpointing, loss_chunk=0):
    """Bytes of the tensors themselves after one forward (saved for backward, found through autograd's saved-
    tensor hooks, distinct storages, parameters excluded; with checkpointing, plus the block inputs the
    checkpoints hold), then weights, gradients and AdamW states after one step."""
    torch.manual_seed(0)
    model = GPT(config)
    if activation_checkpointing:
        memory.checkpoint_blocks(model)
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor
    if activation_checkpointing:  # the checkpoints hold each block's input (counted once, by storage)
        for block in model.transformer.h:
            block.register_forward_pre_hook(lambda module, args: [pack(args[0])] and None)
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        _, loss = model(x, x, loss_chunk=loss_chunk)
    activations = sum(saved.values())
    loss.backward()
    optimizer.step()
    return dict(weights=sum(p.nbytes for p in model.parameters()), grads=sum(p.grad.nbytes for p in model.parameters()),
                optimizer=sum(t.nbytes for t in memory.optimizer_states(optimizer) if t.dim() > 0),
                activations=activations)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
@pytest.mark.parametrize("chunked_loss", [False, True], ids=["plain-loss", "chunked-loss"])
def test_memory_model_matches_measured_tensors(dtype, activation_checkpointing, chunked_loss):
    """Weights, gradients and AdamW states exactly; saved activations within 6% (what autograd saves for a few
    small ops, LayerNorm statistics and attention's log-sum-exp, is left out of the model). The chunked loss is
    CUDA's (train_gpt2.loss_chunk_rows); run here on CPU, it saves the same tensors."""
    config = tiny_config(n_layer=3, n_embd=128, n_head=4)
    batch_size, seq_len = 4, 64
    measured = measure_step(config, batch_size, seq_len, dtype, activation_checkpointing,
                            loss_chunk=100 if chunked_loss else 0)
    predicted = memory.estimate(config, "ddp", 1, batch_size, seq_len, dtype, activation_checkpointing,
                                chunked_loss=chunked_loss)
    saved = memory.saved_activation_bytes(config, batch_size, seq_len, dtype, activation_checkpointing, chunked_loss)
    assert measured["weights"] == predicted.weights
    assert measured["grads"] == predicted.grads
    assert measured["optimizer"] == predicted.optimizer
    assert measured["activations"] == pytest.approx(saved, rel=0.06)


def test_memory_model_shards_states_and_fits_gpt2_xl_on_24_gb_only_when_sharded():
    config = GPTConfig.preset("gpt2-xl", vocab_size=50304)
    ddp, zero, fsdp = (memory.estimate(config, s, 8, 1, 1024) for s in memory.STRATEGIES)
    assert zero.optimizer == ddp.optimizer // 8 and zero.weights == ddp.weights
    assert fsdp.weights == ddp.weights // 8 and fsdp.grads == ddp.grads // 8
    fit = lambda strategy, ac: memory.largest_micro_batch(config, strategy, 8, 1024, 24 * 2**30,
                                                          activation_checkpointing=ac)
    assert fit("ddp", False) == fit("ddp", True) == 0  # ~25 GB of fp32 weights, grads and AdamW states
    assert fit("fsdp", True) > fit("fsdp", False) > 0
