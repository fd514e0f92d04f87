"""
HellaSwag evaluation of GPT-2 and of our checkpoints, scored in the two conventions people quote.

    python hellaswag.py -m gpt2                     # OpenAI GPT-2 (hub name or local Hugging Face directory)
    python hellaswag.py -c log/       # one of train_gpt2.py's checkpoints
    torchrun --standalone --nproc_per_node=8 hellaswag.py -c log/

Completion style (build-nanogpt / llm.c, what GPT-2 reproductions quote): the context `ctx`, then each ending
with a leading space, one row per ending. acc picks the ending with the highest summed log-prob, acc_norm the
one with the lowest mean loss per ending token. GPT-2 124M: acc 0.2859, acc_norm 0.2955.

Harness style (EleutherAI lm-evaluation-harness, task `hellaswag`): a cleaned "activity_label: ctx_a Ctx_b"
query, each cleaned ending with a leading space. harness_acc picks the highest summed log-prob, harness_acc_norm
the highest log-prob per character of the ending. GPT-2 124M: acc 0.2892, acc_norm 0.3114.

train_gpt2.py calls load_examples() and evaluate() from here during training.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import fineweb
from checkpoint import load_model, resolve_checkpoint_path
from distributed import destroy_process_group, init_process_group
from hardware import DTYPES, pick_device, pick_dtype
from model import GPT2_VOCAB_SIZE

OFFICIAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data"
SPLIT_SIZES = {"train": 39905, "val": 10042, "test": 10003}  # examples in the official files
DOWNLOAD_TIMEOUT = (10, 60)  # seconds to connect, seconds of silence mid-download: fail fast when offline
EOT = 50256  # <|endoftext|>: right padding, and the context of an example whose context is empty

# -----------------------------------------------------------------------------
# data: download, cache, parse


def default_cache_dir():
    return os.environ.get("HELLASWAG_CACHE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")


def split_filename(split):
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split '{split}': choose one of {', '.join(SPLIT_SIZES)}")
    return f"hellaswag_{split}.jsonl"


def download_split(split, cache_dir, base_url=OFFICIAL_URL):
    """Fetch hellaswag_{split}.jsonl into cache_dir and return its examples. The file appears only once it is
    complete and parses (and, from the official URL, has the published number of examples), so the cache never
    holds a partial file."""
    import requests  # here, not at the top: a fifth of a second of every start of this and train_gpt2.py
    filename = split_filename(split)
    url = f"{base_url.rstrip('/')}/{filename}"
    path = os.path.join(cache_dir, filename)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=cache_dir, prefix=f".{filename}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as response:
                    response.raise_for_status()
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
            except requests.RequestException as e:
                raise RuntimeError(f"could not download {url} ({type(e).__name__}); offline, put {filename} at "
                                   f"{path} or pass --data-file PATH") from None
        examples = read_examples(tmp_path, source=url)
        expected = SPLIT_SIZES[split] if base_url.rstrip("/") == OFFICIAL_URL else None
        if expected is not None and len(examples) != expected:
            raise RuntimeError(f"{url} gave {len(examples)} examples, not the {expected} of the official file; "
                               f"the download was cut short or the file changed upstream, so it was not cached")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return examples


def check_example(example):
    """Raise ValueError saying what is wrong with one parsed jsonl line; normalize the label to an int."""
    if not isinstance(example, dict):
        raise ValueError("not a JSON object")
    for key in ("ctx", "ctx_a", "ctx_b", "activity_label"):
        if not isinstance(example.get(key), str):
            raise ValueError(f"'{key}' is missing or not a string")
    endings = example.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise ValueError("'endings' must be a list of at least 2 strings")
    label = example.get("label")
    if label is None:
        return  # the test split has no labels; evaluate() refuses it
    if isinstance(label, str) and label.isdigit():
        label = int(label)  # the Hugging Face copy stores labels as strings
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise ValueError(f"'label' must be an index into the {len(endings)} endings, got {example['label']!r}")
    example["label"] = label


def read_examples(path, source=None):
    """Parse a HellaSwag jsonl file; a bad line is a ValueError that names the file and the line number."""
    source = source or path
    examples = []
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            try:
                line = line.decode("utf-8")
                if not line.strip():
                    continue
                example = json.loads(line)
                check_example(example)
            except ValueError as e:  # also json.JSONDecodeError and UnicodeDecodeError
                reason = str(e).splitlines()[0][:200]
                raise ValueError(f"{source} line {line_number} is not a HellaSwag example: {reason}") from None
            examples.append(example)
    if not examples:
        raise ValueError(f"{source} has no examples")
    return examples


def load_examples(split="val", cache_dir=None, data_file=None, limit=None, base_url=None):
    """HellaSwag examples as dicts (ctx, ctx_a, ctx_b, activity_label, endings, label, ...), in file order.
    data_file reads a local jsonl with no network; otherwise the split comes from cache_dir (default:
    $HELLASWAG_CACHE or hellaswag/ beside this file), downloaded from base_url (default: $HELLASWAG_URL or the
    HellaSwag GitHub repository) the first time. limit keeps the first `limit` examples."""
    if data_file is not None:
        if not os.path.isfile(data_file):
            raise FileNotFoundError(f"HellaSwag data file {data_file} does not exist")
        examples = read_examples(data_file)
    else:
        cache_dir = cache_dir or default_cache_dir()
        path = os.path.join(cache_dir, split_filename(split))
        if os.path.exists(path):
            examples = read_examples(path)
        else:  # the download parses the file to check it: no second read
            examples = download_split(split, cache_dir, base_url or os.environ.get("HELLASWAG_URL") or OFFICIAL_URL)
    return examples if limit is None else examples[:limit]


def check_labels(examples):
    if not examples:
        raise ValueError("no HellaSwag examples to evaluate")
    unlabeled = sum(1 for example in examples if example.get("label") is None)
    if unlabeled:
        raise ValueError(f"{unlabeled} of {len(examples)} examples have no label (the HellaSwag test split is "
                         f"unlabeled); evaluate --split val or train")


# -----------------------------------------------------------------------------
# rendering: each example becomes one (context tokens, continuation tokens) pair per ending


def render_example(example, enc):
    """Completion style, as in the reference: the context tokens, then each ending encoded with a leading space
    (GPT-2's BPE attaches the space to the following word). The score covers the ending tokens only."""
    context = enc.encode(example["ctx"])
    return [(context, enc.encode(" " + ending)) for ending in example["endings"]]


def preprocess(text):
    """lm-evaluation-harness's HellaSwag cleanup: the [title], [step], ... tags are WikiHow artifacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def harness_query(example):
    return preprocess(example["activity_label"] + ": " + example["ctx_a"] + " " + example["ctx_b"].capitalize())


def harness_choices(example):
    return [preprocess(ending) for ending in example["endings"]]


def render_harness_example(example, enc):
    """Harness style: the query, then " " + each cleaned ending. As in the harness (_encode_pair), whitespace at
    the end of the query moves to the front of the continuation. The harness encodes query + continuation whole
    and splits it after the query's tokens; with GPT-2's BPE, where a space always starts a new pre-token, that
    equals encoding the two separately, which is what we do."""
    query = harness_query(example)
    moved = query[len(query.rstrip()):]
    context = enc.encode(query.rstrip())
    return [(context, enc.encode(moved + " " + choice)) for choice in harness_choices(example)]


def fit_row(context, continuation, block_size):
    """One scoring row as (input, targets, number of scored targets). The scored targets are the last ones (the
    continuation); a row longer than block_size + 1 tokens loses tokens on the left, as in the harness."""
    tokens = ((context or [EOT]) + continuation)[-(block_size + 1):]  # the harness also conditions on EOT
    return tokens[:-1], tokens[1:], min(len(continuation), len(tokens) - 1)


# -----------------------------------------------------------------------------
# scoring


def scored_logprobs(logits, targets, chunk=1024):
    """float32 log p(target) from the (K, vocab) logits of the scored positions and their (K,) targets. The
    log-softmax runs over a chunk of positions at a time, so the float32 copy stays small."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.size(0), chunk):
        part = slice(start, start + chunk)
        logprobs = logits[part].float().log_softmax(dim=-1)
        out[part] = logprobs.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1)
    return out


def score_rows(model, rows, device, autocast_dtype=None, greedy=False):
    """Summed log-prob of the scored targets of each row, batched into one forward pass. Rows are right-padded
    to the longest: with causal attention, padding after a row's tokens cannot change their logits.
    greedy=True also returns, per row, whether every scored target is the argmax token (lm-eval's is_greedy)."""
    T = max(len(inputs) for inputs, _, _ in rows)
    inputs = torch.full((len(rows), T), EOT, dtype=torch.long)
    targets = torch.zeros((len(rows), T), dtype=torch.long)
    scored = torch.zeros((len(rows), T), dtype=torch.bool)
    for r, (row_inputs, row_targets, n_scored) in enumerate(rows):
        inputs[r, :len(row_inputs)] = torch.tensor(row_inputs)
        targets[r, :len(row_targets)] = torch.tensor(row_targets)
        scored[r, len(row_targets) - n_scored:len(row_targets)] = True
    device_type = torch.device(device).type
    autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    scored = scored.to(device)
    with autocast:  # the head runs at the scored positions only (context and padding are skipped)
        logits, _ = model(inputs.to(device), head_positions=scored)
    # the log-softmax covers the real vocabulary, not the padded columns of a 50304 model
    logits, targets = logits[:, :GPT2_VOCAB_SIZE], targets.to(device)[scored]
    logprobs = scored_logprobs(logits, targets).double().cpu().numpy()
    # each row's scored positions are contiguous in row-major order; summing exactly that span (in float64)
    # makes the sum independent of how many rows and how much padding share the batch
    ends = np.cumsum([n for _, _, n in rows])
    sums = [float(logprobs[end - n:end].sum()) for end, (_, _, n) in zip(ends, rows)]
    if not greedy:
        return sums
    hits = (logits.argmax(dim=-1) == targets).cpu().numpy()
    return sums, [bool(hits[end - n:end].all()) for end, (_, _, n) in zip(ends, rows)]


def argmax(values):
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties go to the first, like torch.argmax


def render_rows(example, enc, block_size):
    """The example's scoring rows: (completion-style rows, harness-style rows), one per ending each."""
    completion = [fit_row(c, e, block_size) for c, e in render_example(example, enc)]
    harness = [fit_row(c, e, block_size) for c, e in render_harness_example(example, enc)]
    return completion, harness


def length_sorted_batches(rows, rows_per_batch):
    """Row indices in batches, longest first: rows of similar length share a batch, so there is little padding
    (less than batching whole examples, whose 8 rows differ in length), and running out of memory happens on
    the first batch rather than at the end."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    return [order[start:start + rows_per_batch] for start in range(0, len(order), rows_per_batch)]


@torch.no_grad()
def score_examples(model, examples, device, batch_size=16, autocast_dtype=None, progress=False):
    """Per-example scores and predictions in both conventions, in the order of `examples`.
    A forward pass holds as many rows as batch_size examples have (8 for HellaSwag: 4 endings x 2 conventions),
    taken from all examples in order of length. Batched scores equal one-example-at-a-time scores up to float
    rounding, and the predictions are the same."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if model.config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"the model's vocab_size {model.config.vocab_size} is smaller than GPT-2's "
                         f"{GPT2_VOCAB_SIZE}; HellaSwag is tokenized with the GPT-2 tokenizer")
    enc = fineweb.get_tokenizer()
    rendered = [render_rows(example, enc, model.config.block_size) for example in examples]
    rows = [row for completion, harness in rendered for row in completion + harness]
    rows_per_example = max(len(completion) + len(harness) for completion, harness in rendered)
    logprob_sums = [None] * len(rows)
    with tqdm(total=len(rows), desc="hellaswag", unit="row", disable=not progress) as bar:
        for batch in length_sorted_batches(rows, batch_size * rows_per_example):
            for i, logprob_sum in zip(batch, score_rows(model, [rows[i] for i in batch], device, autocast_dtype)):
                logprob_sums[i] = logprob_sum
            bar.update(len(batch))
    results, offset = [], 0
    for example, (completion, harness) in zip(examples, rendered):
        logprob = logprob_sums[offset:offset + len(completion)]
        harness_logprob = logprob_sums[offset + len(completion):offset + len(completion) + len(harness)]
        offset += len(completion) + len(harness)
        results.append(make_result(example, completion, logprob, harness_logprob))
    return results


def make_result(example, completion_rows, logprob, harness_logprob):
    n_tokens = [n for _, _, n in completion_rows]
    n_chars = [len(choice) for choice in harness_choices(example)]  # the harness counts without the space
    return dict(
        label=example.get("label"),
        logprob=logprob, n_tokens=n_tokens, harness_logprob=harness_logprob, n_chars=n_chars,
        pred=argmax(logprob),  # highest summed log-prob = lowest summed loss
        pred_norm=argmax([lp / n for lp, n in zip(logprob, n_tokens)]),  # lowest mean loss per token
        harness_pred=argmax(harness_logprob),
        harness_pred_norm=argmax([lp / max(n, 1) for lp, n in zip(harness_logprob, n_chars)]),
    )


def shard_examples(examples, rank, world_size):
    """Rank r of a DDP run takes examples r, r + world_size, ...: disjoint, and together all of them."""
    return examples[rank::world_size]


def evaluate(model, examples, device, batch_size=16, autocast_dtype=None, rank=0, world_size=1, progress=False):
    """HellaSwag accuracy of a model.GPT -> dict(n, acc, acc_norm, harness_acc, harness_acc_norm) (fractions).
    Each rank scores its own shard of the examples; when torch.distributed is initialized and world_size > 1
    the counts are summed over ranks (one all_reduce on every rank, whatever its shard size). The model's
    train/eval mode is restored on return."""
    check_labels(examples)
    was_training = model.training
    model.eval()
    try:
        shard = shard_examples(examples, rank, world_size)
        results = score_examples(model, shard, device, batch_size, autocast_dtype, progress) if shard else []
    finally:
        model.train(was_training)
    keys = ("pred", "pred_norm", "harness_pred", "harness_pred_norm")
    counts = [len(results)] + [sum(int(r[key] == r["label"]) for r in results) for key in keys]
    counts = torch.tensor(counts, dtype=torch.long, device=device)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n, correct, correct_norm, harness_correct, harness_correct_norm = counts.tolist()
    return dict(n=n, acc=correct / n, acc_norm=correct_norm / n,
                harness_acc=harness_correct / n, harness_acc_norm=harness_correct_norm / n)


def load_examples_on_every_rank(rank, world_size, device):
    """train_gpt2.py's HellaSwag: the val examples, or None (with a warning) when the data is not available.
    Every rank must agree, or the evaluation's all-reduce would hang: the ranks vote."""
    examples, reason = None, ""
    try:
        examples = load_examples("val")
    except (OSError, RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
    if world_size > 1:
        ok = torch.tensor(float(examples is not None), device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        examples = examples if ok.item() else None
    if examples is None and rank == 0:
        print(f"warning: HellaSwag disabled, its data is not available ({reason or 'on some rank'})", file=sys.stderr)
    return examples



# -----------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="HellaSwag accuracy of GPT-2 or a train_gpt2.py checkpoint, "
                                     "completion style and lm-evaluation-harness style.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--model", help="Hugging Face weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                        "a hub repo OWNER/NAME, or a local directory with config.json and model.safetensors")
    source.add_argument("-c", "--checkpoint", help="a train_gpt2.py checkpoint, or a run directory (its newest): e.g. log/")
    parser.add_argument("--split", default="val", choices=list(SPLIT_SIZES),
                        help="which HellaSwag split (test has no labels, so it cannot be scored)")
    parser.add_argument("--data-file", default=None,
                        help="a local jsonl in the HellaSwag format, read instead of the cache (no network)")
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="where downloaded splits are kept ($HELLASWAG_CACHE, else hellaswag/ beside this file)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples' worth of rows per forward pass (8 rows each: 4 endings x 2 conventions); "
                        "None: 16 on CUDA, 1 elsewhere (on CPU, big batches are slower: see dev/bench_hellaswag.py)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="autocast dtype; auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), fp16 "
                        "on older ones, fp32 on CPU and MPS")
    parser.add_argument("--out", default=None, help="also write the results as JSON to this path")
    return parser.parse_args(argv)


def check_args(args):
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.checkpoint is not None:
        args.checkpoint = resolve_checkpoint_path(args.checkpoint)  # a file, or a run directory's newest


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    # torchrun sets RANK: each process scores its shard and rank 0 reports
    ddp = "RANK" in os.environ
    rank, world_size, local_rank = 0, 1, 0
    if ddp:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(args.device, local_rank, ddp)
    if ddp:
        init_process_group("nccl" if device.startswith("cuda") else "gloo", rank, world_size)
    succeeded = False
    try:
        dtype = pick_dtype(args.dtype, device, warn=rank == 0)
        batch_size = args.batch_size or (16 if torch.device(device).type == "cuda" else 1)
        if ddp and rank != 0:
            dist.barrier()  # rank 0 downloads first; the others then read its cache
        examples = load_examples(args.split, args.cache_dir, args.data_file, args.limit)
        if ddp and rank == 0:
            dist.barrier()
        check_labels(examples)
        model = load_model(args.checkpoint, args.model, device)
        start = time.time()
        results = evaluate(model, examples, device, batch_size, DTYPES[dtype], rank, world_size, progress=rank == 0)
        seconds = time.time() - start
        if rank == 0:
            report(results, args, dtype, device, world_size, batch_size, seconds)
        succeeded = True
    finally:
        if ddp:  # settle on success only: a rank that failed early must not pair with evaluate's all_reduce
            kept = destroy_process_group(settle=succeeded)  # noqa: F841 (kept alive until main returns)


def report(results, args, dtype, device, world_size, batch_size, seconds):
    print(f"completion style (build-nanogpt/llm.c; GPT-2 124M gets 0.2859 / 0.2955):  "
          f"acc {results['acc']:.4f}  acc_norm {results['acc_norm']:.4f}")
    print(f"harness style (lm-evaluation-harness; GPT-2 124M gets 0.2892 / 0.3114):   "
          f"acc {results['harness_acc']:.4f}  acc_norm {results['harness_acc_norm']:.4f}")
    print(f"hellaswag n={results['n']} acc={results['acc']:.4f} acc_norm={results['acc_norm']:.4f} "
          f"harness_acc={results['harness_acc']:.4f} harness_acc_norm={results['harness_acc_norm']:.4f}")
    if args.out:
        fineweb.save_json_atomically(args.out, dict(
            **results, model=args.model or args.checkpoint, data=args.data_file or args.split, dtype=dtype,
            device=device, world_size=world_size, batch_size=batch_size, seconds=round(seconds, 3)))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
