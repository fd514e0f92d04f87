"""
HellaSwag throughput: examples/s with many examples per forward pass against one example per forward pass (the
reference scripts' way), on the same model in the same process, alternated, medians.

    python -m dev.bench_hellaswag                                # small random model, synthetic examples, CPU
    python -m dev.bench_hellaswag --data-file hellaswag/hellaswag_val.jsonl --device cuda --dtype bf16

Without --data-file the examples are synthetic: HellaSwag's shape (a context and 4 endings) with random words,
so the benchmark runs offline. Each timed run is a full hellaswag.evaluate() call, tokenization included.
"""

import argparse
import random
import statistics
import sys
import time

import torch

import fineweb
import hellaswag
from model import GPT, GPTConfig

WORDS = ("the a man woman dog ball runs walks into house garden water slowly quickly then after before he she "
         "they picks up puts down looks at table chair kitchen cuts paper knife bike ride street car window "
         "opens closes shows camera smiles talks about how to make cake with flour eggs sugar and mixes bowl "
         "pours onto plate sits stands next people crowd cheers plays guitar piano song sings dances music").split()


def synthetic_examples(n, seed=0, ctx_words=(10, 90), ending_words=(5, 40)):
    """n HellaSwag-shaped examples of random words; lengths roughly span the real validation set's."""
    rng = random.Random(seed)
    sentence = lambda lo_hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(*lo_hi))) + "."  # noqa: E731
    examples = []
    for i in range(n):
        ctx_a, ctx_b = sentence(ctx_words), rng.choice(WORDS)
        examples.append(dict(ind=i, activity_label="Synthetic", ctx_a=ctx_a, ctx_b=ctx_b, ctx=ctx_a + " " + ctx_b,
                             endings=[sentence(ending_words) for _ in range(4)], label=rng.randrange(4),
                             split="val", split_type="indomain", source_id=f"synthetic~{i}"))
    return examples


def score_batched(model, examples, device, batch_size, autocast_dtype):
    return hellaswag.score_examples(model, examples, device, batch_size, autocast_dtype)


def score_one_per_forward(model, examples, device, batch_size, autocast_dtype):
    """The reference scripts' way: each example's rows (4 endings x 2 conventions) in a forward pass of their own."""
    return [hellaswag.score_examples(model, [example], device, 1, autocast_dtype)[0] for example in examples]


def examples_per_second(score, model, examples, device, batch_size, autocast_dtype):
    """(examples/s, predictions) of one full scoring run, tokenization included."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = score(model, examples, device, batch_size, autocast_dtype)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    predictions = [(r["pred"], r["pred_norm"], r["harness_pred"], r["harness_pred_norm"]) for r in results]
    return len(examples) / (time.perf_counter() - start), predictions


def padding_overhead(examples, block_size, batch_size):
    """Tokens the forward passes process / real tokens, for batches formed the way hellaswag.py forms them
    (batch_size None: one example per forward pass)."""
    enc = fineweb.get_tokenizer()
    rendered = [hellaswag.render_rows(example, enc, block_size) for example in examples]
    if batch_size is None:
        batches = [[len(inputs) for inputs, _, _ in completion + harness] for completion, harness in rendered]
    else:
        rows = [row for completion, harness in rendered for row in completion + harness]
        batches = [[len(rows[i][0]) for i in batch]
                   for batch in hellaswag.length_sorted_batches(rows, batch_size * 8)]
    return sum(max(lengths) * len(lengths) for lengths in batches) / sum(sum(lengths) for lengths in batches)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-file", default=None, help="a HellaSwag jsonl; default: synthetic examples")
    parser.add_argument("--n-examples", type=int, default=64, help="examples per timed run")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per forward pass, batched mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each mode (after one warm-up each)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(hellaswag.DTYPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("n_examples", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")

    if args.data_file:
        examples = hellaswag.load_examples(data_file=args.data_file, limit=args.n_examples)
        data = args.data_file
    else:
        examples = synthetic_examples(args.n_examples)
        data = "synthetic"
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device).eval()
    autocast_dtype = hellaswag.DTYPES[args.dtype]
    print(f"model: {config} ({model.num_params() / 1e6:.1f}M params), device {args.device}, dtype {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    overheads = [padding_overhead(examples, config.block_size, size) for size in (args.batch_size, None)]
    print(f"data: {data}, {len(examples)} examples per run; tokens processed / real tokens: "
          f"{overheads[0]:.2f} batched, {overheads[1]:.2f} one per forward")

    runs = {score_batched: [], score_one_per_forward: []}
    predictions = {}
    for repeat in range(args.repeats + 1):  # A B A B ...: drift on a shared machine hits both modes alike
        for score, speeds in runs.items():
            speed, predictions[score] = examples_per_second(score, model, examples, args.device, args.batch_size,
                                                            autocast_dtype)
            if repeat > 0:  # the first round is the warm-up
                speeds.append(speed)
    batched, single = runs[score_batched], runs[score_one_per_forward]
    same = predictions[score_batched] == predictions[score_one_per_forward]
    batched_median, single_median = statistics.median(batched), statistics.median(single)
    print(f"batched ({args.batch_size} examples/forward): " + " ".join(f"{x:.1f}" for x in batched) + " ex/s")
    print("one example/forward:          " + " ".join(f"{x:.1f}" for x in single) + " ex/s")
    print(f"median: batched {batched_median:.1f} ex/s, one per forward {single_median:.1f} ex/s, "
          f"batched/one-per-forward: {batched_median / single_median:.2f}x")
    print(f"same predictions: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
