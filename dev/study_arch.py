"""
The architecture study of README's "Studies: architectures and Post-LN", on the --demo corpus
(`python fineweb.py --demo`), on CPU; or at GPT-2 124M's shape on a GPU (--preset gpt2-124m). Each run is
`python train_gpt2.py --demo ...` (or the 124M flags) as a subprocess, --jobs at a time.

    python -m dev.study_arch recipes     # gpt2/AdamW/cosine vs llama vs modern vs modern+Muon+WSD, 3 seeds each
    python -m dev.study_arch postln      # Post-LN vs Pre-LN: LR {1x, 3x, 10x} x warmup {0, default} x 3 seeds
    python -m dev.study_arch postln --preset gpt2-124m --data-dir DIR --seeds 1 2 --jobs 2   # 12 layers, T=1024

Recipes: final val loss (mean ± std over seeds), step time against gpt2's (median dt of each run's steps, mean
over seeds), and the first evaluated step at which each run's val loss reaches gpt2's mean final val loss.
Post-LN: a run diverged if it stopped on --max-bad-steps (exit 3) or ended with a val loss above its step-0 val
loss; with the rate of that, the max gradient norm (before clipping) and the final val loss.
Writes {out}/{study}.json and {out}/{study}.md (the tables README quotes), and the run directories under {out}.
Post-LN's runs go in the order that matters if time runs out: the first seed of every cell before the second, the
highest LR and no warmup first, Pre and Post side by side; --collect then tabulates what finished, and
--results-from a {study}.json written earlier (another machine's, say) skips the runs it holds.
"""

import argparse
import collections
import concurrent.futures
import json
import math
import os
import re
import statistics
import subprocess
import sys

import train_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPIKE_Z = 5.0  # postln: a loss 5 standard deviations above the recent ones is a spike
RECIPES = {  # name -> train_gpt2.py flags on top of --demo
    "gpt2": ["--arch", "gpt2"],
    "llama": ["--arch", "llama"],
    "modern": ["--arch", "modern"],
    "modern+muon+wsd": ["--arch", "modern", "--optimizer", "muon", "--schedule", "wsd"],
}
# the base of every run: train_gpt2.py flags, the LRs the postln study scales together, its default warmup, steps
# and val tokens. demo: train_gpt2.py's --demo preset (4 layers, 64 wide, T=64) for a CPU. gpt2-124m: GPT-2 124M's
# shape (12 layers, 768 wide, 12 heads, T=1024), 65,536 tokens per step, GPT-2's LR, for a GPU
PRESETS = {
    "demo": dict(flags=["--demo"], max_lr=3e-3, min_lr=3e-4, warmup=20, max_steps=150, val_tokens=8192),
    "gpt2-124m": dict(flags=["--model", "gpt2", "--seq-len", "1024", "--batch-size", "16", "--total-batch-size",
                             "65536", "--hellaswag-every", "0"], max_lr=6e-4, min_lr=6e-5, warmup=100,
                      max_steps=300, val_tokens=65536),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("study", choices=["recipes", "postln"], help="which study to run")
    parser.add_argument("--preset", default="demo", choices=list(PRESETS), help="the runs' base: demo (CPU) or "
                        "gpt2-124m (GPU)")
    parser.add_argument("--data-dir", default="demo_shards", help="the shards (demo: `python fineweb.py --demo`'s)")
    parser.add_argument("--out-dir", default="log/study_arch", help="run directories, JSON and markdown go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339], help="one run per seed")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per run (None: the preset's, 150 / 300)")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between val losses")
    parser.add_argument("--val-tokens", type=int, default=None, help="val tokens per evaluation (None: the "
                        "preset's, 8192 / 65536)")
    parser.add_argument("--lr-factors", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="postln: x the "
                        "preset's --max-lr and --min-lr (demo 3e-3 and 3e-4, gpt2-124m 6e-4 and 6e-5)")
    parser.add_argument("--warmups", type=int, nargs="+", default=None, help="postln: --warmup-steps (None: 0 and "
                        "the preset's, 20 / 100)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--collect", action="store_true", help="run nothing: tabulate the runs already done, "
                        "leaving out the ones that are not")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (step times are then measured under "
                        "each other's load too)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes: which "
                        "to run (the first is the one the others are measured against)")
    parser.add_argument("--checkpoint-at-end", action="store_true", help="keep each run's final checkpoint (for "
                        "heads.py; the default writes none)")
    parser.add_argument("--results-from", metavar="JSON", default=None, help="a {study}.json written earlier: its "
                        "runs are taken as done (written to their run directories) and not run again")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.max_steps = preset["max_steps"] if args.max_steps is None else args.max_steps
    args.val_tokens = preset["val_tokens"] if args.val_tokens is None else args.val_tokens
    args.warmups = [0, preset["warmup"]] if args.warmups is None else args.warmups
    return args


def train(args, name, flags):
    """One train_gpt2.py run (skipped if its result is already there) -> its measurements."""
    log_dir = os.path.join(args.out_dir, args.study, name)
    result_path = os.path.join(log_dir, "result.json")
    if args.collect and not os.path.exists(result_path):
        return None
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
        result["val"] = {int(step): loss for step, loss in result["val"].items()}  # JSON keys are strings
        return result
    os.makedirs(log_dir, exist_ok=True)
    for stale in ("log.txt", "metrics.jsonl"):
        if os.path.exists(os.path.join(log_dir, stale)):
            os.remove(os.path.join(log_dir, stale))
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), *PRESETS[args.preset]["flags"],
           "--data-dir", args.data_dir, "--log-dir", log_dir, "--resume", "none", "--max-steps", str(args.max_steps),
           "--eval-every", str(args.eval_every), "--val-tokens", str(args.val_tokens),
           "--sample-every", "0", "--checkpoint-every", str(args.max_steps if args.checkpoint_at_end else 0)] + flags
    print(" ".join(cmd[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 3):  # 3: stopped on --max-bad-steps, a result of the study
        raise RuntimeError(f"{name} failed with exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    steps = [(int(s), float(loss), float(norm), float(dt)) for s, loss, norm, dt in
             re.findall(r"^step +(\d+) \| loss (\S+) \| lr \S+ \| norm (\S+) \| dt ([\d.]+)ms", proc.stdout, re.M)]
    val = {int(s): float(v) for s, v in re.findall(r"^(\d+) val (\S+)$", open(os.path.join(log_dir, "log.txt")).read(),
                                                   re.M)}
    params = int(re.search(r"\}: ([\d,]+) parameters", proc.stdout).group(1).replace(",", ""))
    result = dict(name=name, flags=flags, returncode=proc.returncode, val=val,
                  final_val=val.get(args.max_steps), start_val=val.get(0),
                  max_norm=max((n for _, _, n, _ in steps), default=None),
                  max_norm_step=max(steps, key=lambda step: step[2])[0] if steps else None,
                  first_spike=first_spike([(s, loss) for s, loss, _, _ in steps]),
                  median_dt_ms=statistics.median(dt for _, _, _, dt in steps[min(5, len(steps) // 2):])  # warm ones
                  if steps else None,
                  params=params, skipped=proc.stderr.count("update skipped"))
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def first_spike(losses, z_threshold=SPIKE_Z):
    """The first step whose train loss is a spike by --skip-spikes' own rule (train_gpt2.is_spike against the
    recent losses), found after the run, so that no update was skipped; None if there is none."""
    recent = collections.deque(maxlen=train_gpt2.SPIKE_WINDOW)
    for step, loss in losses:
        if not math.isfinite(loss) or train_gpt2.is_spike(loss, recent, z_threshold):
            return step
        recent.append(loss)
    return None


def reuse_results(args):
    """--results-from: each run of an earlier summary becomes its run directory's result.json, unless one is there."""
    with open(args.results_from) as f:
        summary = json.load(f)
    for results in summary["runs"].values():
        for result in results:
            result_path = os.path.join(args.out_dir, args.study, result["name"], "result.json")
            if not os.path.exists(result_path):
                os.makedirs(os.path.dirname(result_path), exist_ok=True)
                with open(result_path, "w") as f:
                    json.dump(result, f, indent=1)


def train_all(args, runs):
    """[(name, flags)] -> their results, in order, --jobs at a time."""
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda run: train(args, *run), runs))


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recipes(args):
    base = args.recipes[0]  # gpt2 unless told otherwise: the loss and the step time the others are measured against
    plan = [(f"{name}-s{seed}", RECIPES[name] + ["--seed", str(seed)]) for seed in args.seeds for name in args.recipes]
    by_name = {run_name: result for (run_name, _), result in zip(plan, train_all(args, plan))}
    runs = {name: [r for r in (by_name[f"{name}-s{seed}"] for seed in args.seeds) if r] for name in args.recipes}
    runs = {name: results for name, results in runs.items() if results}
    if base not in runs:
        raise RuntimeError(f"no finished {base} run to measure the others against")
    target = mean_std([r["final_val"] for r in runs[base]])[0]
    base_dt = mean_std([r["median_dt_ms"] for r in runs[base]])[0]
    rows, tokens_per_step = [], train_gpt2.parse_args(PRESETS[args.preset]["flags"]).total_batch_size
    for name, results in runs.items():
        reached = [next((s for s, v in sorted(r["val"].items()) if v <= target), None) for r in results]
        step_ms = mean_std([r["median_dt_ms"] for r in results])[0]
        mean, std = mean_std([r["final_val"] for r in results])
        rows.append(dict(recipe=name, flags=" ".join(RECIPES[name]), final_val_mean=mean, final_val_std=std,
                         seeds=[int(r["name"].rsplit("-s", 1)[1]) for r in results],
                         final_vals=[r["final_val"] for r in results], params=results[0]["params"],
                         step_time_ratio=step_ms / base_dt, tokens_per_sec=tokens_per_step / (step_ms / 1000),
                         steps_to_gpt2_final=reached,
                         tokens_to_gpt2_final=[None if s is None else s * tokens_per_step for s in reached]))
    lines = [f"Target: {base}'s mean final val loss {target:.4f} at step {args.max_steps} ({tokens_per_step:,} tokens "
             f"per step); val every {args.eval_every} steps; the seeds column counts each recipe's runs (seeds from "
             f"{args.seeds[0]}); tokens/s from the median step time (runs side by side share the device).", "",
             f"| recipe | seeds | parameters | final val (mean ± std) | step time vs {base} | tokens/s | step reaching "
             f"{base}'s final val |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        reached = ", ".join("never" if s is None else str(s) for s in row["steps_to_gpt2_final"])
        spread = f" ± {row['final_val_std']:.4f}" if len(row["seeds"]) > 1 else " (one run)"
        lines.append(f"| {row['recipe']} | {len(row['seeds'])} | {row['params']:,} | {row['final_val_mean']:.4f}{spread} "
                     f"| {row['step_time_ratio']:.2f}x | {row['tokens_per_sec']:,.0f} | {reached} |")
    return dict(target=target, rows=rows, runs=runs), lines


def postln(args):
    rows, runs = [], {}
    base_lr, base_min_lr = PRESETS[args.preset]["max_lr"], PRESETS[args.preset]["min_lr"]
    cells = [(position, factor, warmup) for position in ("pre", "post") for factor in args.lr_factors
             for warmup in args.warmups]
    name = lambda position, factor, warmup, seed: f"{position}-lr{factor:g}x-w{warmup}-s{seed}"
    order = [(position, factor, warmup, seed) for seed in args.seeds for factor in sorted(args.lr_factors, reverse=True)
             for warmup in sorted(args.warmups) for position in ("pre", "post")]  # what matters most first
    plan = [(name(*run), ["--norm-position", run[0], "--max-lr", f"{base_lr * run[1]:g}", "--min-lr",
             f"{base_min_lr * run[1]:g}", "--warmup-steps", str(run[2]), "--seed", str(run[3])]) for run in order]
    by_name = {run_name: result for (run_name, _), result in zip(plan, train_all(args, plan))}
    for position, factor, warmup in cells:
        results = [r for r in (by_name[name(position, factor, warmup, seed)] for seed in args.seeds) if r]
        if not results:
            continue
        diverged = [r["returncode"] == 3 or r["final_val"] is None or not r["final_val"] <= r["start_val"] for r in results]
        mean, std = mean_std([r["final_val"] for r in results])
        rows.append(dict(norm_position=position, lr_factor=factor, max_lr=base_lr * factor, warmup=warmup,
                         diverged=sum(diverged), runs=len(results),
                         max_grad_norm=max(r["max_norm"] for r in results if r["max_norm"] is not None),
                         max_grad_norm_steps=[r.get("max_norm_step") for r in results],  # older results lack it
                         first_spikes=[r.get("first_spike") for r in results],
                         final_val_mean=mean, final_val_std=std, skipped_steps=sum(r["skipped"] for r in results)))
        runs[f"{position}-lr{factor:g}x-w{warmup}"] = results
    lines = [f"Spike: a train loss {SPIKE_Z:g} standard deviations above the recent ones (--skip-spikes' rule, applied "
             f"after the run); steps listed per seed.", "",
             "| norm | max LR | warmup | diverged | max grad norm (at step) | first spike | final val (mean ± std) "
             "| skipped steps |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        val = "—" if row["final_val_mean"] is None else f"{row['final_val_mean']:.4f}" + (
            f" ± {row['final_val_std']:.4f}" if row["runs"] > 1 else "")
        at = ", ".join("?" if s is None else str(s) for s in row["max_grad_norm_steps"])
        spikes = ", ".join("none" if s is None else str(s) for s in row["first_spikes"])
        lines.append(f"| {row['norm_position']}-LN | {row['max_lr']:g} ({row['lr_factor']:g}x) | {row['warmup']} | "
                     f"{row['diverged']}/{row['runs']} | {row['max_grad_norm']:.2f} ({at}) | {spikes} | {val} | "
                     f"{row['skipped_steps']} |")
    return dict(rows=rows, runs=runs), lines


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f"{args.data_dir} does not exist: run `python fineweb.py --demo` first (or, for "
                                f"--preset gpt2-124m, make shards with fineweb.py)")
    if args.results_from:
        reuse_results(args)
    summary, lines = (recipes if args.study == "recipes" else postln)(args)
    summary["command"] = " ".join(["python", "-m", "dev.study_arch"] + (argv if argv is not None else sys.argv[1:]))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{args.study}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out_dir, f"{args.study}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
