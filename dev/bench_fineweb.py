"""
Tokens/s of fineweb.py's pipeline against the straightforward recipe, build-nanogpt's fineweb.py:
Pool(cpu_count()//2).imap(encode one document, chunksize=16) into uint16 arrays, copied into 100M-token shards.
Both run on the --demo corpus (read into memory first, so file reading is not timed), write the same shards
(checked byte for byte), on the same machine in the same run, alternating A B A B after a warm-up round. The
recipe on all cores, Pool(cpu_count()), is timed too, and so is one core of each (no processes, no files), to
tell the gain per core from the gain of using every core.

    python -m dev.bench_fineweb                                  # the whole demo corpus, 5 timed rounds
    python -m dev.bench_fineweb --max-tokens 20000 --rounds 1    # smoke test
"""
import argparse
import datetime
import glob
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import time

import numpy as np
import tiktoken

import fineweb

def tokenize_one(doc):
    """build-nanogpt's tokenize(): a Python list of ints per document, then a uint16 array."""
    enc = fineweb.get_tokenizer()
    tokens = [enc.eot_token]
    tokens.extend(enc.encode_ordinary(doc))
    return np.array(tokens).astype(np.uint16)

def baseline_write_shards(docs, out_dir, shard_size, max_tokens, nprocs=max(1, os.cpu_count() // 2)):
    """build-nanogpt's main loop (plus --max-tokens), writing the same files as fineweb.write_shards. It reads
    all of docs: breaking out of Pool.imap early can hang Pool.terminate (a large task stuck in its pipe)."""
    fineweb.get_tokenizer()  # built before forking, like build-nanogpt's module-level enc
    os.makedirs(out_dir, exist_ok=True)
    shard_index, token_count, total = 0, 0, 0
    buffer = np.empty(shard_size, dtype=np.uint16)
    with mp.Pool(nprocs) as pool:
        for tokens in pool.imap(tokenize_one, docs, chunksize=16):
            if max_tokens:
                tokens = tokens[:max_tokens - total]
            total += len(tokens)
            while len(tokens):
                take = min(len(tokens), shard_size - token_count)
                buffer[token_count:token_count + take] = tokens[:take]
                token_count, tokens = token_count + take, tokens[take:]
                if token_count == shard_size:
                    np.save(fineweb.shard_path(out_dir, "edufineweb", shard_index), buffer)
                    shard_index, token_count = shard_index + 1, 0
    if token_count:
        np.save(fineweb.shard_path(out_dir, "edufineweb", shard_index), buffer[:token_count])

def all_cores_baseline_write_shards(docs, out_dir, shard_size, max_tokens):
    baseline_write_shards(docs, out_dir, shard_size, max_tokens, nprocs=os.cpu_count())

def ours_write_shards(docs, out_dir, shard_size, max_tokens):
    fineweb.write_shards(docs, out_dir, shard_size, max_tokens, num_proc=os.cpu_count(), source="bench", verbose=False)

def one_core_ours(docs):
    return sum(len(tokens) for tokens, _ in map(fineweb.tokenize_documents, fineweb.batched_by_size(docs, 1 << 20)))

def one_core_baseline(docs):
    return sum(len(tokenize_one(doc)) for doc in docs)

def timed_run(write, docs, shard_size, max_tokens):
    """Tokens/s of one run into a fresh directory, and the bytes of the shards it wrote."""
    out_dir = tempfile.mkdtemp(prefix="bench_fineweb_")
    try:
        start = time.perf_counter()
        write(docs, out_dir, shard_size, max_tokens)
        seconds = time.perf_counter() - start
        shards = [open(path, "rb").read() for path in sorted(glob.glob(os.path.join(out_dir, "*.npy")))]
        tokens = sum(len(np.load(path, mmap_mode="r")) for path in glob.glob(os.path.join(out_dir, "*.npy")))
        return tokens / seconds, tokens, shards
    finally:
        shutil.rmtree(out_dir)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fineweb.py tokens/s against build-nanogpt's Pool.imap recipe")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each, alternating")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first")
    parser.add_argument("--shard-size", type=int, default=500_000)
    parser.add_argument("--max-tokens", type=int, help="only the first N tokens of the demo corpus")
    args = parser.parse_args()

    docs = list(fineweb.demo_documents())
    if args.max_tokens:  # just the documents that hold them, so neither pipeline stops early
        enc = fineweb.get_tokenizer()
        lengths = np.cumsum([1 + len(enc.encode_ordinary(doc)) for doc in docs])
        docs = docs[:int(np.searchsorted(lengths, args.max_tokens)) + 1]
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, tiktoken {tiktoken.__version__}, numpy {np.__version__}")
    print(f"demo corpus: {len(docs)} documents, {sum(map(len, docs)):,} characters; shards of {args.shard_size:,} tokens")
    pipelines = {"fineweb.py": ours_write_shards, "baseline": baseline_write_shards,
                 "baseline on all cores": all_cores_baseline_write_shards}
    runs = {name: [] for name in pipelines}
    for round_index in range(args.warmup + args.rounds):
        timed = round_index >= args.warmup
        shards, line = [], f"{'round' if timed else 'warm-up'} {round_index + 1}:"
        for name, write in pipelines.items():
            speed, tokens, pipeline_shards = timed_run(write, docs, args.shard_size, args.max_tokens)
            shards.append(pipeline_shards)
            line += f" {name} {speed / 1e6:.2f}M tok/s,"
            if timed:
                runs[name].append(speed)
        assert shards[0] == shards[1] == shards[2], "the pipelines wrote different shards"
        print(f"{line} {tokens:,} tokens")
    one_core = {"fineweb.py": [], "baseline": []}
    for round_index in range(args.warmup + args.rounds):  # one core each, alternating too
        for name, tokenize in [("fineweb.py", one_core_ours), ("baseline", one_core_baseline)]:
            start = time.perf_counter()
            tokens = tokenize(docs)
            if round_index >= args.warmup:
                one_core[name].append(tokens / (time.perf_counter() - start))
    medians = {name: statistics.median(speeds) for name, speeds in runs.items()}
    ours, baseline, all_cores = medians.values()
    print(f"median of {args.rounds}: fineweb.py {ours / 1e6:.2f}M tok/s ({os.cpu_count()} processes), "
          f"baseline {baseline / 1e6:.2f}M tok/s (Pool({max(1, os.cpu_count() // 2)}).imap, chunksize=16), "
          f"baseline on all cores {all_cores / 1e6:.2f}M tok/s (Pool({os.cpu_count()}))")
    print(f"ratio fineweb.py / baseline: {ours / baseline:.2f}x (/ baseline on all cores: {ours / all_cores:.2f}x)")
    ours, baseline = statistics.median(one_core["fineweb.py"]), statistics.median(one_core["baseline"])
    print(f"one core, tokenizing only: fineweb.py {ours / 1e6:.2f}M tok/s (encode_to_numpy), baseline "
          f"{baseline / 1e6:.2f}M tok/s (encode_ordinary into a list), ratio {ours / baseline:.2f}x")
