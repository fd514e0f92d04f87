"""
eval_harness.py's model (GPTLM) against lm-eval's own Hugging Face model (`lm_eval --model hf`) on the export of
the same weights: examples/s of the same lm-eval task, in one process, alternated, medians; and whether the
scores agree.

    python -m dev.bench_eval_harness                                  # random model, synthetic HellaSwag, CPU
    python -m dev.bench_eval_harness --data-file hellaswag/hellaswag_val.jsonl --n-examples 500 --device cuda

The task is lm-eval's installed hellaswag yaml with its data source pointed at a local jsonl (synthetic examples
unless --data-file), so both sides run exactly the harness's prompts and metrics. Each timed run is a whole
simple_evaluate() call: building the task, tokenizing, scoring and the metrics. --work-dir keeps the checkpoint,
the export and the task yaml, and prints the two equivalent command lines, to time whole processes too.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from dev import bench_hellaswag
import eval_harness
import hellaswag
from checkpoint import model_from_checkpoint
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(work_dir, args):
    """A random checkpoint, its export_hf.py directory, and the local task; returns their paths."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=1024, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config)
    checkpoint = os.path.join(work_dir, "model_00000.pt")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 0}, checkpoint)
    export = os.path.join(work_dir, "hf")
    subprocess.run([sys.executable, os.path.join(ROOT, "export_hf.py"), checkpoint, export, "--force"], check=True,
                   stdout=subprocess.DEVNULL)
    if args.data_file:
        examples = hellaswag.read_examples(args.data_file)[:args.n_examples]
    else:
        examples = bench_hellaswag.synthetic_examples(args.n_examples)
    task_dir = os.path.join(work_dir, "tasks")
    os.makedirs(task_dir, exist_ok=True)
    data = os.path.join(task_dir, "hellaswag_bench.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(example) + "\n" for example in examples)
    import lm_eval
    installed = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "hellaswag", "hellaswag.yaml")
    with open(os.path.join(task_dir, "hellaswag_bench.yaml"), "w") as f:
        f.write(f"include: {installed}\ntask: hellaswag_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    train: {data}\n    validation: {data}\n")
    return checkpoint, export, task_dir, len(examples)


def run_once(lm, task_manager):
    """(seconds, acc, acc_norm, [log-likelihoods of every request]) of one simple_evaluate call."""
    import lm_eval
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag_bench"], task_manager=task_manager,
                                      log_samples=True, verbosity="ERROR")
    seconds = time.perf_counter() - start
    metrics = results["results"]["hellaswag_bench"]
    lls = [ll for doc in results["samples"]["hellaswag_bench"] for ll, _ in doc["filtered_resps"]]
    return seconds, metrics["acc,none"], metrics["acc_norm,none"], lls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-examples", type=int, default=64)
    parser.add_argument("--data-file", default=None, help="a HellaSwag jsonl instead of synthetic examples")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="requests per forward pass, both sides")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each, alternated, after a warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default=None, help="keep the files here (default: a temporary directory)")
    args = parser.parse_args()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        os.makedirs(work_dir, exist_ok=True)
        checkpoint, export, task_dir, n = prepare(work_dir, args)
        task_manager = TaskManager(include_path=task_dir, include_defaults=False)
        ours = eval_harness.GPTLM(model_from_checkpoint(checkpoint, args.device), args.device, "fp32", args.batch_size)
        theirs = HFLM(pretrained=export, device=args.device, batch_size=args.batch_size, dtype="float32")
        print(f"{n} examples, {args.n_layer}L/{args.n_head}H/{args.n_embd}C, batch {args.batch_size}, {args.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        runs = {"ours": [], "hf": []}
        for round_ in range(args.rounds + 1):  # round 0 is the warm-up
            for name, lm in (("ours", ours), ("hf", theirs)) if round_ % 2 == 0 else (("hf", theirs), ("ours", ours)):
                result = run_once(lm, task_manager)
                if round_:
                    runs[name].append(result)
        for name in runs:
            rates = [n / seconds for seconds, *_ in runs[name]]
            print(f"{name:>4}: {statistics.median(rates):7.2f} examples/s (min {min(rates):.2f}, max {max(rates):.2f})")
        ratios = [theirs_s / ours_s for (ours_s, *_), (theirs_s, *_) in zip(runs["ours"], runs["hf"])]
        print(f"eval_harness.py / lm_eval --model hf, examples/s: median {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds)")
        (_, acc, acc_norm, lls), (_, hf_acc, hf_acc_norm, hf_lls) = runs["ours"][0], runs["hf"][0]
        worst = max(abs(a - b) for a, b in zip(lls, hf_lls))
        print(f"scores: acc {acc:.4f} vs {hf_acc:.4f}, acc_norm {acc_norm:.4f} vs {hf_acc_norm:.4f} "
              f"({'equal' if (acc, acc_norm) == (hf_acc, hf_acc_norm) else 'DIFFERENT'}); largest log-likelihood "
              f"difference {worst:.2e} over {len(lls)} requests")
        if args.work_dir:
            print("whole processes:")
            print(f"  python eval_harness.py -c {checkpoint} --tasks hellaswag_bench --include-path {task_dir} "
                  f"--batch-size {args.batch_size} --device {args.device} --dtype fp32")
            print(f"  lm_eval --model hf --model_args pretrained={export},dtype=float32 --tasks hellaswag_bench "
                  f"--include_path {task_dir} --batch_size {args.batch_size} --device {args.device}")


if __name__ == "__main__":
    main()
