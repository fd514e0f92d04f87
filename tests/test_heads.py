import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import heads
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(block_size=64, vocab_size=101, n_layer=2, n_head=2, n_embd=64)


def tiny_model(seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).to(dtype).eval().requires_grad_(False)


def random_windows(n=6, seq_len=16, vocab=101, seed=0):
    return torch.randint(0, vocab, (n, seq_len + 1), generator=torch.Generator().manual_seed(seed))


def evaluator(model, windows, batch_size=3):
    return heads.Evaluator(model, windows, batch_size, "cpu", "fp32")


def copy_head(attn, source, target):
    """Give head `target` the same q, k, v rows and c_proj columns as head `source`."""
    hs, width = attn.head_size, attn.n_head * attn.head_size
    with torch.no_grad():
        for part in range(3):
            rows_from = slice(part * width + source * hs, part * width + (source + 1) * hs)
            rows_to = slice(part * width + target * hs, part * width + (target + 1) * hs)
            attn.c_attn.weight[rows_to] = attn.c_attn.weight[rows_from]
            if attn.c_attn.bias is not None:
                attn.c_attn.bias[rows_to] = attn.c_attn.bias[rows_from]
        attn.c_proj.weight[:, target * hs:(target + 1) * hs] = attn.c_proj.weight[:, source * hs:(source + 1) * hs]


# -----------------------------------------------------------------------------
# redundancy

def test_identical_heads_have_similarity_one_in_both_definitions():
    model = tiny_model(n_head=4)
    with torch.no_grad():  # at init, attention is nearly uniform and every pair of heads looks alike: sharpen it
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20)
    copy_head(model.transformer.h[1].attn, source=0, target=2)
    similarity = heads.head_similarity(model, random_windows(), 4, "cpu", "fp32")
    for kind in ("attention", "output"):
        assert similarity[kind][1, 0, 2].item() == pytest.approx(1.0, abs=1e-5), kind
        assert similarity[kind][1, 2, 0].item() == pytest.approx(1.0, abs=1e-5), kind
        assert torch.allclose(similarity[kind].diagonal(dim1=1, dim2=2), torch.ones(2, 4), atol=1e-5)
        assert similarity[kind][0, 0, 2].item() < 0.95  # the other layer's heads are not copies
    pairs = heads.similar_pairs(similarity["output"], [0.5, 0.5], 0.99)
    assert [(p["layer"], p["heads"]) for p in pairs] == [(1, [0, 2])]


def test_similarity_is_summed_in_fp32_under_bf16_autocast():
    """CUDA's default dtype is bf16, and the hooks run inside the forward's autocast: their einsums must not be
    bf16 (8 significant bits: a head's similarity with itself came out 0.9966). B x (T-1) = 3 x 99 windows, a
    count bf16 cannot hold exactly."""
    model = tiny_model(n_head=4, block_size=128)
    similarity = heads.head_similarity(model, random_windows(n=3, seq_len=100), 3, "cpu", "bf16")
    for kind in ("attention", "output"):
        torch.testing.assert_close(similarity[kind].diagonal(dim1=1, dim2=2), torch.ones(2, 4),
                                   rtol=0, atol=5e-5, msg=kind)  # fp32 sums of ~3e4 terms: ~1e-5; bf16: 3e-3


def test_similarity_leaves_the_model_as_it_was():
    model = tiny_model()
    windows = random_windows()
    before = model(windows[:, :-1])[0]
    heads.head_similarity(model, windows, 4, "cpu", "fp32")
    assert all(not block.attn.keep_attention and block.attn.attention is None for block in model.transformer.h)
    assert not model.transformer.h[0].attn.c_proj._forward_pre_hooks
    assert torch.equal(model(windows[:, :-1])[0], before)


# -----------------------------------------------------------------------------
# importance

def test_a_head_with_zero_output_projection_has_no_importance_and_is_pruned_first():
    model = tiny_model(seed=1)
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:, 32:] = 0  # head 1 of layer 1 writes nothing
    ev = evaluator(model, random_windows())
    present = heads.head_presence(model.config)
    raw = ev.mask_gradient()
    assert raw[1, 1].item() == 0.0 and (raw[0] > 0).all() and raw[1, 0] > 0
    importance = heads.normalise_per_layer(raw, present)
    assert heads.ascending(importance, present)[0] == (1, 1)
    assert ev.loss(ev.mask([(1, 1)])) == pytest.approx(ev.loss(), abs=1e-6)  # its ablation costs nothing


def test_importance_by_autograd_equals_finite_differences():
    model = tiny_model(seed=2, dtype=torch.float64)
    windows = random_windows(n=2)
    ev = heads.Evaluator(model, windows, 2, "cpu", "fp32")  # one batch: the mean of |grad| is |grad|
    ev.full_mask = ev.full_mask.double()
    grad = ev.mask_gradient()
    x, y = windows[:, :-1], windows[:, 1:]

    def loss(mask):  # in float64 throughout (the model's own loss is computed in float32)
        logits = model(x, head_mask=mask)[0]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()

    eps = 1e-6
    for layer in range(2):
        for head in range(2):
            up, down = ev.full_mask.clone(), ev.full_mask.clone()
            up[layer, head] += eps
            down[layer, head] -= eps
            finite_difference = (loss(up) - loss(down)) / (2 * eps)
            assert abs(finite_difference) > 1e-4  # a real gradient, not two zeros
            assert grad[layer, head].item() == pytest.approx(abs(finite_difference), rel=1e-4)


def test_importance_is_normalised_per_layer():
    scores = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 5.0]])
    present = torch.tensor([[True, True], [True, True], [True, False]])
    normalised = heads.normalise_per_layer(scores, present)
    assert torch.allclose(normalised, torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]))


# -----------------------------------------------------------------------------
# the fast path: (mask, batch) pieces on worker threads, the loss in chunks, each mask once


def reference_loss(model, windows, batch_size, mask):
    """The straightforward way (heads.py before it was made fast): one mask, batches of batch_size windows, the
    whole logits and F.cross_entropy, averaged over windows in float64."""
    total = 0.0
    for x, y in heads.batches(windows, batch_size):
        total += model(x, y, head_mask=mask)[1].double().item() * x.size(0)
    return total / len(windows)


def reference_gradient(model, windows, batch_size, mask):
    total, n = torch.zeros_like(mask), 0
    for x, y in heads.batches(windows, batch_size):
        leaf = mask.clone().requires_grad_(True)
        total += torch.autograd.grad(model(x, y, head_mask=leaf)[1], leaf)[0].abs()
        n += 1
    return total / n


# The fast path takes the head and the softmax over the vocabulary 128 positions at a time, on worker threads.
# Here that gives the reference's bits, but a CPU's matmul may block a chunk differently from a whole batch and
# round differently: a few float32 roundings (6e-8 relative each). 1e-6 is well above that and well below what a
# wrong mask or a window left out changes here (6e-5 for one head of this random model, 2e-4).
SAME_SUMS_OTHER_ORDER = 1e-6


def test_batched_losses_on_two_workers_equal_the_one_mask_reference():
    model = tiny_model(seed=8, n_head=4)
    windows = random_windows(n=11, seq_len=48)  # batches of 144 positions (loss chunks of 128 and 16), a short last one
    ev = heads.Evaluator(model, windows, 3, "cpu", "fp32", workers=2)
    masks = [ev.mask([]), ev.mask([(0, 1)]), ev.mask([(1, 0), (1, 3), (0, 2)]), ev.mask([(0, h) for h in range(4)])]
    losses = ev.losses(masks + [masks[1]])  # a mask met twice is computed once
    for mask, loss in zip(masks, losses):
        assert loss == pytest.approx(reference_loss(model, windows, 3, mask), rel=SAME_SUMS_OTHER_ORDER)
    assert losses[4] == losses[1] and len(ev.known) == 4
    ev.batch_loss = None  # known masks are not computed again
    assert ev.losses(masks) == losses[:4]


def test_mask_gradient_on_two_workers_equals_the_reference_and_gives_the_loss():
    model = tiny_model(seed=9, n_head=4)
    windows = random_windows(n=7, seq_len=40)  # batches of 3, 3 and 1 windows: |grad| is averaged per batch
    ev = heads.Evaluator(model, windows, 3, "cpu", "fp32", workers=2)
    mask = ev.mask([(1, 2)])
    # a gradient sums terms of both signs (softmax minus one-hot) in float32, so its roundings are relative to
    # those terms rather than to the sum: measured 3e-7 relative here; 1e-5 leaves room, an absolute 1e-8 covers
    # a gradient near 0 (these are about 1e-3)
    torch.testing.assert_close(ev.mask_gradient(mask), reference_gradient(model, windows, 3, mask), rtol=1e-5,
                               atol=1e-8)
    ev.batch_loss = None  # the gradient's forwards gave the loss at that mask
    assert ev.loss(mask) == pytest.approx(reference_loss(model, windows, 3, mask), rel=SAME_SUMS_OTHER_ORDER)


def test_threads_are_split_among_workers_on_cpu_only():
    threads = torch.get_num_threads()
    try:
        assert heads.split_threads_among_workers("cuda") == 1 and torch.get_num_threads() == threads
        workers = heads.split_threads_among_workers("cpu")
        assert 1 <= workers <= heads.MAX_CPU_WORKERS and workers * torch.get_num_threads() <= threads
    finally:
        torch.set_num_threads(threads)


# -----------------------------------------------------------------------------
# pruning

def test_pruning_nothing_gives_the_unpruned_loss_and_curves_count_heads():
    model = tiny_model(seed=3)
    ev = evaluator(model, random_windows())
    base = ev.loss()
    counts = [heads.heads_to_prune(f, 4) for f in heads.FRACTIONS]
    assert counts == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]  # the nearest whole number of heads
    order = [(0, 0), (1, 1), (0, 1), (1, 0)]
    result = heads.curve(ev, order, [0, 1, 2], base)
    assert result["loss"][0] == base == ev.loss(ev.mask([]))
    assert result["loss"][2] == ev.loss(ev.mask(order[:2])) and result["perplexity_change"][0] == 0
    assert result["perplexity_change"][2] == pytest.approx(math.exp(result["loss"][2] - base) - 1)


def test_iterative_order_removes_each_step_from_what_is_left():
    model = tiny_model(seed=4, n_head=4)
    ev = evaluator(model, random_windows())
    present = heads.head_presence(model.config)
    order = heads.iterative_order(ev, present, [0, 1, 3, 3, 5])
    assert len(order) == 5 and len(set(order)) == 5
    first = heads.ascending(heads.normalise_per_layer(ev.mask_gradient(), present), present)[0]
    assert order[0] == first
    # each step's gradient gave the loss there: the curve needs only its last point computed
    assert all(ev.key(ev.mask(order[:n]), ev.windows) in ev.known for n in (0, 1, 3))


def test_crossing_reports_the_last_step_within_five_percent():
    fractions = [0, 0.05, 0.1, 0.15, 0.2]
    cross = heads.crossing(fractions, [0, 0.01, 0.06, 0.03, 0.2])
    assert cross["last_within"] == 0.05 and cross["first_above"] == 0.1 and cross["first_above_change"] == 0.06
    assert heads.crossing(fractions, [0, 0, 0, 0, 0.01])["first_above"] is None


def test_masking_every_head_of_a_layer_removes_that_attention_sublayer():
    model = tiny_model(seed=5)
    windows = random_windows()
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.bias.zero_()  # the bias is not a head's: it stays when all are masked
    ev = evaluator(model, windows)
    masked = ev.loss(ev.mask([(0, 0), (0, 1)]))
    model.transformer.h[0].attn.forward = lambda x, *args: torch.zeros_like(x)  # x + attn(ln_1(x)) becomes x
    assert masked == pytest.approx(ev.loss(), abs=1e-6)


@pytest.mark.parametrize("removed", [{(0, 1)}, {(0, 0), (1, 1), (1, 2)}, {(1, 0), (1, 1), (1, 2), (1, 3)}])
def test_sliced_model_equals_the_masked_one(removed):
    model = tiny_model(seed=6, n_head=4)
    windows = random_windows()
    ev = evaluator(model, windows)
    pruned = heads.without_heads(model, removed)
    counts = [4 - sum(1 for layer, _ in removed if layer == l) for l in range(2)]
    assert pruned.config.layer_heads == counts
    hs, C = 16, 64
    assert model.num_params() - pruned.num_params() == len(removed) * (4 * C * hs + 3 * hs)  # weights, q/k/v biases
    assert evaluator(pruned, windows).loss() == pytest.approx(ev.loss(ev.mask(removed)), abs=1e-5)
    x = windows[:, :-1]
    mask = ev.mask(removed)
    torch.testing.assert_close(pruned(x)[0], model(x, head_mask=mask)[0], atol=1e-5, rtol=1e-5)
    # a pruned model's own mask covers its first layer_heads[l] heads
    again = heads.without_heads(pruned, {(0, 0)})
    assert again.config.layer_heads == [counts[0] - 1, counts[1]]


def test_pruned_model_has_fewer_flops():
    from model import flops_per_token
    model = tiny_model(n_head=4)
    pruned = heads.without_heads(model, {(0, 0), (1, 3)})
    assert flops_per_token(pruned.config, 64) < flops_per_token(model.config, 64)


# -----------------------------------------------------------------------------
# the command line, as a user runs it

def write_shards(directory, n_tokens=4000, seed=0):
    os.makedirs(directory, exist_ok=True)
    tokens = np.random.default_rng(seed).integers(0, 2000, n_tokens).astype(np.uint16)
    tokens[::50] = 50256
    np.save(os.path.join(directory, "edufineweb_val_000000.npy"), tokens)
    return str(directory)


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


PHASES = ["similarity, trained model", "similarity, random model", "importance", "ablation, one head at a time",
          "pruning curve, importance order", "pruning curve, ablation order", "pruning curves, 2 random orders",
          "pruning curve, iterative order (gradients)", "pruning curve, iterative order",
          "save-pruned 25%: the sliced model's loss"]


@pytest.mark.slow
def test_cli_writes_documented_results_and_a_pruned_checkpoint_that_loads_everywhere(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=4, n_embd=32)
    model = GPT(config)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": model.state_dict(), "config": asdict(config), "step": 7, "args": {"seq_len": 32}},
               run_dir / "model_00007.pt")
    data = write_shards(tmp_path / "shards")
    out = tmp_path / "out"
    result = run("heads.py", "-c", str(run_dir), "--data-dir", data, "--tokens", "512", "--batch-size", "4",
                 "--random-draws", "2", "--save-pruned", "25%", "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "+5% perplexity, importance order" in result.stdout and "pruned checkpoint" in result.stdout
    # every phase shows a progress bar on stderr that gets to 100% (tqdm redraws a bar after a carriage return)
    finished = [line for line in result.stderr.replace("\r", "\n").splitlines() if "100%" in line]
    for phase in PHASES:
        assert any(line.startswith(phase + ":") for line in finished), f"no finished progress bar for {phase!r}"
    assert "100%" not in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(heads.RESULT_KEYS)
    assert results["data"]["tokens"] == 512 and results["data"]["seq_len"] == 32 and results["step"] == 7
    assert len(results["pruning"]["random"]["draws"]) == 2
    assert results["pruning"]["heads_pruned"] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    for name in ("importance", "iterative", "ablation"):
        assert len(results["pruning"][name]["loss"]) == 11
    for picture in ("similarity.png", "importance.png", "pruning.png"):
        assert (out / picture).stat().st_size > 1000
    saved = results["pruned_checkpoint"]
    assert saved["layer_heads"] and sum(saved["layer_heads"]) == 6
    assert saved["params_after"] < saved["params_before"]
    assert saved["flops_per_token_after"] < saved["flops_per_token_before"]
    assert saved["val_loss"] == pytest.approx(saved["masked_val_loss"], abs=1e-5)
    sample = run("sample.py", "-c", saved["path"], "--num-samples", "1", "--max-new-tokens", "5", "--seed", "0",
                 "--device", "cpu")
    assert sample.returncode == 0, sample.stderr
    hellaswag_file = tmp_path / "hellaswag.jsonl"
    example = dict(ind=0, activity_label="Cooking", ctx_a="A man cuts an onion.", ctx_b="he", ctx="A man cuts an "
                   "onion. he", split="val", split_type="indomain", label=0, source_id="activitynet~v_0",
                   endings=["puts it in a pan.", "flies away.", "sings.", "reads a book."])
    hellaswag_file.write_text(json.dumps(example) + "\n")
    hella = run("hellaswag.py", "-c", os.path.dirname(saved["path"]), "--data-file", str(hellaswag_file), "--device", "cpu")
    assert hella.returncode == 0, hella.stderr
    assert "hellaswag n=1 " in hella.stdout
    studies = open(os.path.join(ROOT, "docs", "studies.md")).read()
    assert all(f"`{key}`" in studies for key in heads.RESULT_KEYS), "docs/studies.md documents every results.json key"


def test_cli_errors_are_one_line(tmp_path):
    result = run("heads.py", "-c", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_windows_from_val_shards_and_from_a_text_file(tmp_path):
    data = write_shards(tmp_path / "shards", n_tokens=1000)
    windows, shards = heads.val_windows(data, 200, 64)
    tokens = np.load(os.path.join(data, "edufineweb_val_000000.npy"))
    assert windows.shape == (4, 65) and shards == ["edufineweb_val_000000.npy"]  # ceil(200 / 64) windows
    assert np.array_equal(windows[1].numpy(), tokens[64:129])  # stride 64, as train_gpt2.py's val loss reads
    assert heads.val_windows(data, 10**6, 64)[0].shape == (15, 65)  # all the shard holds
    (tmp_path / "t.txt").write_text("hello world, " * 100)
    windows, _ = heads.text_windows(str(tmp_path / "t.txt"), 64, 32)
    assert windows.shape == (2, 33)


@pytest.mark.parametrize("arch", ["llama", "modern", "postln"])
def test_other_architectures_slice_mask_and_keep_attention_alike(arch):
    from model import ARCHS
    model = tiny_model(seed=7, n_head=4, **ARCHS[arch])  # RoPE, QK-norm, no biases, untied head, post-LN
    with torch.no_grad():
        for block in model.transformer.h:  # zero_init_proj would make every head's output 0
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.02)
            block.attn.c_attn.weight.mul_(20)  # sharp attention: heads that are not copies differ
    copy_head(model.transformer.h[1].attn, source=0, target=2)
    windows = random_windows()
    x = windows[:, :-1]
    logits = model(x)[0]
    for block in model.transformer.h:
        block.attn.keep_attention = True
    torch.testing.assert_close(model(x)[0], logits, atol=1e-5, rtol=1e-5)  # RoPE and QK-norm come before it
    for block in model.transformer.h:
        block.attn.keep_attention, block.attn.attention = False, None
    similarity = heads.head_similarity(model, windows, 3, "cpu", "fp32")
    for kind in ("attention", "output"):
        assert similarity[kind][1, 0, 2].item() == pytest.approx(1.0, abs=1e-5), kind
    ev = evaluator(model, windows)
    removed = {(0, 1), (1, 0), (1, 3)}
    pruned = heads.without_heads(model, removed)
    assert evaluator(pruned, windows).loss() == pytest.approx(ev.loss(ev.mask(removed)), abs=1e-5)
    assert torch.equal(pruned.generate(x[:1, :5], 6, temperature=0)[:, :5], x[:1, :5])  # the KV cache with RoPE
