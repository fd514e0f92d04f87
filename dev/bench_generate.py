"""
Generation speed as app.py serves it: tokens/s of its generate_stream (sample.py's sampling, the KV cache, one
token at a time) for a model, by default a randomly initialised GPT-2 124M (speed does not depend on the weights).
What a Space made by `export_hf.py --space` can expect on hardware like this machine's.

    python -m dev.bench_generate                          # 124M, 1 and 4 samples, 200 new tokens, 5 repeats
    python -m dev.bench_generate -c log/ --tokens 100     # one of our checkpoints
    python -m dev.bench_generate --smoke                  # a tiny model, 2 repeats (the tests run it)

Each figure is the median of the repeats, with the spread; the first token's latency (the prompt's forward) is
given apart. The machine's load average is printed beside them: on a shared CPU it moves them.
"""

import argparse
import os
import statistics
import sys

import torch

from app import generate_stream
from checkpoint import load_model
from fineweb import get_tokenizer
from hardware import pick_device, pick_dtype
from model import GPT, GPTConfig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-c", "--checkpoint", help="one of our checkpoints or a run directory (default: a random "
                                                   "124M)")
    source.add_argument("-m", "--model", help="a Hugging Face name or directory")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--samples", default="1,4", help="batch sizes to measure, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="generations per batch size (the median is given)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 8 tokens, 2 repeats")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        raise ValueError("--tokens and --repeats must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    torch.manual_seed(0)
    if args.smoke:
        model, name = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64)).to(device).eval(), "tiny"
        args.tokens, args.repeats = 8, 2
    elif args.checkpoint or args.model:
        model, name = load_model(args.checkpoint, args.model, device), args.checkpoint or args.model
    else:
        model, name = GPT(GPTConfig()).to(device).eval(), "GPT-2 124M (random init)"
    enc = get_tokenizer()
    print(f"{name}: {model.num_params() / 1e6:.1f}M parameters on {device} ({dtype}), {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    for num_samples in [int(n) for n in args.samples.split(",")]:
        rates, first = [], []
        for repeat in range(args.repeats):
            for _, stats in generate_stream(model, enc, "Hello, I'm a language model,", args.tokens, 1.0, 50, 1.0,
                                            repeat, num_samples, device, dtype):
                pass
            rates.append(stats["tokens"] / stats["seconds"])
            first.append(stats["first_token_s"])
        print(f"{num_samples} sample(s) x {args.tokens} tokens: {statistics.median(rates):.1f} tokens/s "
              f"(min {min(rates):.1f}, max {max(rates):.1f}, {args.repeats} runs), first token after "
              f"{1000 * statistics.median(first):.0f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
