"""
The whole GPU path in one command: throughput, the variants that matter, fp16, train_gpt2.py's own step,
HellaSwag batching, generation with and without the KV cache, and GPT-2 XL against the memory model.

    python -m dev.bench_suite                          # one GPU; sized to finish in under 8 minutes on an H100
    python -m dev.bench_suite --json log/suite.json    # the JSON goes there (default: bench_suite.json)
    python -m dev.bench_suite --smoke                  # tiny configs on CPU: every part runs (the tests do this)

Run it from the repository root (it imports model.py, bench.py and the other top-level modules from there).

A markdown report goes to stdout, the same figures as JSON to the file. A part that cannot run here (out of
memory, no compiler) becomes a line saying why, and the other parts still run. Timing follows bench.py: warm-up
(compile included) untimed, torch.cuda.synchronize around each timed step, medians.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date

import numpy as np
import torch

import bench
import hardware
import memory
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the full suite on a GPU, and the smoke version on CPU: same parts, sizes that fit each
SIZES = {
    "gpu": dict(model="gpt2", seq_len=1024, batch_sizes=[16, 32, 64], dtype="bf16", compile=True, backend="inductor",
                warmup=5, steps=20, rounds=5, repeats=3, train_steps=30, hellaswag_examples=64, prompt=16,
                new_tokens=128, big_model="gpt2-xl", big_steps=3),
    "smoke": dict(model="tiny", seq_len=64, batch_sizes=[2, 4], dtype="fp32", compile=False, backend="eager",
                  warmup=1, steps=2, rounds=2, repeats=1, train_steps=6, hellaswag_examples=4, prompt=4, new_tokens=4,
                  big_model="tiny", big_steps=1),
}
TRAIN_MEDIAN_AFTER = 10  # train_gpt2.py's steps that count: those after the first 10 (compile, warm-up)


def bench_args(size, device, batch_size, **flags):
    """bench.py's resolved arguments for one configuration (bench.make_args): the size's settings, then `flags`."""
    settings = dict(model=size["model"], seq_len=size["seq_len"], dtype=size["dtype"], device=device,
                    steps=size["steps"], warmup=size["warmup"], compile=size["compile"],
                    compile_backend=size["backend"])
    return bench.make_args(**{**settings, "batch_size": batch_size, **flags})


def error_line(e):
    return f"unavailable: {bench.first_line(e)}"


def free(device_type):
    bench.free_device_memory(device_type)


def fresh_compile_cache():
    """Each compiled figure from a static graph of its own shapes, as train_gpt2.py compiles one shape: otherwise
    Dynamo's automatic dynamic shapes make the recompile at the second batch size a dynamic-batch graph, which
    every later configuration in this process would then run."""
    import torch._dynamo
    torch._dynamo.reset()


def measure(args, **variant):
    """One configuration timed as `python bench.py` does: ms/step, tokens/s, MFU, peak memory, and the losses of
    the warm-up steps."""
    fresh_compile_cache()
    step, _, _ = bench.make_train_step(args, **variant)
    losses = [step()[0] for _ in range(max(args.warmup, 1))]  # the first one compiles
    bench.synchronize(args.device_type)
    bench.reset_peak_memory(args.device_type)
    times = bench.time_steps(step, args.steps, args.device_type)
    ms, tokens_per_sec, mfu = bench.figures(args, times)
    peak, label = bench.peak_memory(args.device_type)
    del step
    free(args.device_type)
    return dict(batch_size=args.batch_size, ms_per_step=ms, tokens_per_sec=tokens_per_sec, mfu=mfu,
                peak_memory_mib=peak / 2**20, peak_memory_kind=label, warmup_losses=losses)


# -----------------------------------------------------------------------------
# the parts


def part_throughput(size, device):
    rows = []
    for batch_size in size["batch_sizes"]:
        args = bench_args(size, device, batch_size)
        predicted = memory.estimate(args.config, "ddp", 1, batch_size, args.seq_len,
                                    "fp32" if args.dtype == "fp32" else "bf16").total
        try:
            rows.append({**measure(args), "predicted_eager_mib": predicted / 2**20})
        except Exception as e:
            rows.append(dict(batch_size=batch_size, error=error_line(e)))
            free(args.device_type)
    return rows


def part_variants(size, device):
    """bench.py --compare at the smallest batch (bench.run_compare): eager against compiled, foreach against fused
    AdamW, explicit against flash attention, the other loss (plain or chunked), each against the default fast path,
    in interleaved rounds."""
    args = bench_args(size, device, size["batch_sizes"][0], compare=True, rounds=size["rounds"])
    fresh_compile_cache()  # its variants are built and warmed up first, then timed: not between them
    comparison = bench.run_compare(args)
    baseline = comparison.names[0]
    ms, _, _ = bench.figures(args, [t for times in comparison.round_times[baseline] for t in times])
    ratios = {}
    for name in comparison.names[1:]:
        if name in comparison.failures:
            continue
        per_round = comparison.ratios(name)
        ratios[name] = dict(ratio=statistics.median(per_round), min=min(per_round), max=max(per_round))
        if args.device_type == "cuda":
            ratios[name]["step_memory_mib"] = comparison.step_memory[name] / 2**20
    return dict(batch_size=args.batch_size, baseline=baseline, baseline_ms=ms, ratios=ratios,
                errors=comparison.failures)


def part_fp16(size, device):
    """fp16 autocast with a GradScaler (pre-Ampere GPUs); on CPU (smoke) bf16 stands in, with no scaler."""
    dtype = "fp16" if device.startswith("cuda") else "bf16"
    result = measure(bench_args(size, device, size["batch_sizes"][0], dtype=dtype))
    return {**result, "dtype": dtype, "losses_finite": bool(np.isfinite(result["warmup_losses"]).all())}


def part_train_script(size, device, bench_rows, workdir):
    """train_gpt2.py for size["train_steps"] steps on random-token shards, at the smallest batch: its tokens/s
    (median over the steps after the first 10, or half of them in the smoke run) against bench.py's."""
    args = bench_args(size, device, size["batch_sizes"][0], steps=size["train_steps"])
    args.write_shards, args.warmup, args.steps = os.path.join(workdir, "shards"), 0, size["train_steps"]
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            bench.write_shards(args)  # prints the train_gpt2.py command; we build our own, the same flags
        finally:
            sys.stdout = stdout
    c = args.config
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), "--data-dir", args.write_shards,
           "--log-dir", os.path.join(workdir, "log"), "--n-layer", str(c.n_layer), "--n-head", str(c.n_head),
           "--n-embd", str(c.n_embd), "--vocab-size", str(c.vocab_size), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--total-batch-size", str(bench.tokens_per_step(args)),
           "--max-steps", str(size["train_steps"]), "--device", args.device, "--dtype", args.dtype,
           "--compile" if args.compile else "--no-compile", "--eval-every", "0", "--hellaswag-every", "0",
           "--sample-every", "0", "--checkpoint-every", "0", "--resume", "none"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return dict(error=f"train_gpt2.py exited {result.returncode}: {result.stderr.strip()[-300:]}")
    dts = [float(ms) for ms in re.findall(r"\| dt ([\d.]+)ms", result.stdout)]
    skip = min(TRAIN_MEDIAN_AFTER, len(dts) // 2)
    train_tokens_per_sec = bench.tokens_per_step(args) / (statistics.median(dts[skip:]) / 1000)
    reference = next((row for row in bench_rows if row.get("batch_size") == args.batch_size and "error" not in row),
                     None)
    if reference is None:
        return dict(train_tokens_per_sec=train_tokens_per_sec, error="no bench.py figure at this batch to compare")
    ratio = train_tokens_per_sec / reference["tokens_per_sec"]
    return dict(batch_size=args.batch_size, steps=len(dts), train_tokens_per_sec=train_tokens_per_sec,
                bench_tokens_per_sec=reference["tokens_per_sec"], ratio=ratio, within_3_percent=abs(ratio - 1) <= 0.03)


def small_model(size, device):
    args = bench_args(size, device, 1)
    torch.manual_seed(0)
    config = GPTConfig(**{**vars(args.config), "vocab_size": 50304 if size["model"] != "tiny" else 50257})
    return GPT(config).to(device).eval(), args  # a vocabulary that holds GPT-2's tokens (HellaSwag is real text)


def part_hellaswag(size, device):
    from dev import bench_hellaswag
    import hellaswag
    model, args = small_model(size, device)
    examples = bench_hellaswag.synthetic_examples(size["hellaswag_examples"])
    dtype = hellaswag.DTYPES.get(args.dtype)
    speeds = {"batched": [], "one per forward": []}
    scorers = {"batched": bench_hellaswag.score_batched, "one per forward": bench_hellaswag.score_one_per_forward}
    predictions = {}
    for repeat in range(size["repeats"] + 1):  # A B A B ..., the first round a warm-up
        for name, score in scorers.items():
            speed, predictions[name] = bench_hellaswag.examples_per_second(score, model, examples, device, 16, dtype)
            if repeat:
                speeds[name].append(speed)
    del model
    free(args.device_type)
    batched, single = (statistics.median(speeds[k]) for k in ("batched", "one per forward"))
    return dict(examples=len(examples), batch_size=16, batched_examples_per_sec=batched,
                one_per_forward_examples_per_sec=single, ratio=batched / single,
                same_predictions=predictions["batched"] == predictions["one per forward"])


@torch.no_grad()
def recompute_generate(model, idx, new_tokens):
    """Greedy generation without a cache: the whole sequence through the model for every new token."""
    for _ in range(new_tokens):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def part_generation(size, device):
    model, args = small_model(size, device)
    generator = torch.Generator(device).manual_seed(0)
    prompt = torch.randint(0, 50257, (1, size["prompt"]), device=device, generator=generator)
    autocast = hardware.autocast(args.dtype, args.device)  # fp32 (smoke): no autocast
    runs = {"kv cache": lambda: model.generate(prompt, size["new_tokens"], temperature=0.0),
            "recompute": lambda: recompute_generate(model, prompt, size["new_tokens"])}
    speeds, outputs = {name: [] for name in runs}, {}
    for repeat in range(size["repeats"] + 1):  # the first round a warm-up
        for name, run in runs.items():
            bench.synchronize(args.device_type)
            start = time.perf_counter()
            with autocast:
                outputs[name] = run()
            bench.synchronize(args.device_type)
            if repeat:
                speeds[name].append(size["new_tokens"] / (time.perf_counter() - start))
    del model
    free(args.device_type)
    cached, recomputed = (statistics.median(speeds[k]) for k in runs)
    same = (outputs["kv cache"] == outputs["recompute"]).float().mean().item()
    return dict(prompt_tokens=size["prompt"], new_tokens=size["new_tokens"], kv_cache_tokens_per_sec=cached,
                recompute_tokens_per_sec=recomputed, ratio=cached / recomputed, same_tokens_fraction=same)


def part_big_model(size, device):
    """GPT-2 XL at B=1 with activation checkpointing (eager), its peak memory against the memory model's. On one
    GPU there is nothing to shard, so the prediction is the one-rank one; with more GPUs visible, train_gpt2.py
    under torchrun with --fsdp --activation-checkpointing is measured too, from its printed memory line."""
    args = bench_args(size, device, 1, model=size["big_model"], compile=False, steps=size["big_steps"],
                      activation_checkpointing=True)
    dtype = "fp32" if args.dtype == "fp32" else "bf16"
    predicted = memory.estimate(args.config, "ddp", 1, 1, args.seq_len, dtype, True)
    try:
        measured = measure(args)
    except Exception as e:
        free(args.device_type)
        measured = dict(error=error_line(e))
    result = dict(model=size["big_model"], batch_size=1, activation_checkpointing=True, one_rank=measured,
                  predicted_one_rank_mib=predicted.total / 2**20)
    if args.device_type == "cuda" and torch.cuda.device_count() >= 2:
        result["fsdp"] = fsdp_run(size, args, torch.cuda.device_count())
    return result


def fsdp_run(size, args, world_size):
    with tempfile.TemporaryDirectory() as workdir:
        args.write_shards, args.warmup, args.steps = os.path.join(workdir, "shards"), 0, 2 * world_size
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                bench.write_shards(args)
            finally:
                sys.stdout = stdout
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               os.path.join(ROOT, "train_gpt2.py"), "--data-dir", args.write_shards, "--log-dir",
               os.path.join(workdir, "log"), "--model", size["big_model"], "--batch-size", "1", "--seq-len",
               str(args.seq_len), "--total-batch-size", str(args.seq_len * world_size), "--max-steps", "2",
               "--fsdp", "--activation-checkpointing", "--no-compile", "--eval-every", "0", "--hellaswag-every", "0",
               "--sample-every", "0", "--checkpoint-every", "0", "--resume", "none"]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    peak = re.search(r"memory rank 0: .*peak allocated ([\d,.]+) MiB", result.stdout)
    predicted = memory.estimate(args.config, "fsdp", world_size, 1, args.seq_len, "bf16", True).total / 2**20
    if result.returncode != 0 or not peak:
        return dict(world_size=world_size, error=f"exit {result.returncode}: {result.stderr.strip()[-300:]}",
                    predicted_mib=predicted)
    return dict(world_size=world_size, peak_allocated_mib=float(peak.group(1).replace(",", "")),
                predicted_mib=predicted)


# -----------------------------------------------------------------------------
# the report


def fmt(value, spec=",.0f"):
    return "—" if value is None else format(value, spec)


def markdown(report):
    lines = [f"# python -m dev.bench_suite{' --smoke' if report['smoke'] else ''}",
             f"device: {report['device']} | torch {report['torch']} | {report['date']} | "
             f"total {report['seconds']:.0f} s",
             ""]
    parts = report["parts"]

    def section(title, key, render):
        lines.append(f"## {title}")
        part = parts.get(key)
        if isinstance(part, dict) and "error" in part and len(part) <= 2:
            lines.append(part["error"])
        else:
            render(part)
        lines.append("")

    def throughput(rows):
        kind = next((r["peak_memory_kind"] for r in rows if "peak_memory_kind" in r), "")
        lines.append(f"peak memory: {kind}; memory model: memory.estimate for the eager step (compiled steps use less)")
        lines.extend(["| B | tokens/s | ms/step | MFU | peak memory MiB | memory model MiB |",
                      "|---|---|---|---|---|---|"])
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['batch_size']} | {r['error']} | | | | |")
            else:
                lines.append(f"| {r['batch_size']} | {fmt(r['tokens_per_sec'])} | {r['ms_per_step']:.2f} | "
                             f"{hardware.format_mfu(r['mfu'])} | {fmt(r['peak_memory_mib'])} | "
                             f"{fmt(r['predicted_eager_mib'])} |")

    def variants(part):
        lines.append(f"baseline: {part['baseline']}, B={part['batch_size']}, {part['baseline_ms']:.2f} ms/step; "
                     f"ratio = tokens/s over the baseline's (median of rounds, min-max)")
        lines.append("step memory: peak allocated during the variant's steps above what was allocated before them "
                     "(CUDA only)")
        lines.extend(["| variant | ratio | step memory MiB |", "|---|---|---|"])
        lines.extend(f"| {name} | {r['ratio']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | "
                     f"{fmt(r.get('step_memory_mib'))} |" for name, r in part["ratios"].items())
        lines.extend(f"| {name} | {why} | |" for name, why in part["errors"].items())

    def fp16(part):
        lines.append(f"{part['dtype']}: {fmt(part['tokens_per_sec'])} tokens/s, {part['ms_per_step']:.2f} ms/step, "
                     f"MFU {hardware.format_mfu(part['mfu'])}, peak {fmt(part['peak_memory_mib'])} MiB; losses finite: "
                     f"{'yes' if part['losses_finite'] else 'NO'}")

    def train(part):
        lines.append(f"train_gpt2.py {fmt(part['train_tokens_per_sec'])} tokens/s (median of its steps after the "
                     f"warm-up, B={part['batch_size']}) vs bench.py {fmt(part['bench_tokens_per_sec'])}: "
                     f"{part['ratio']:.3f}, {'within' if part['within_3_percent'] else 'NOT within'} 3%")

    def hella(part):
        lines.append(f"{part['examples']} synthetic examples: batched ({part['batch_size']}/forward) "
                     f"{part['batched_examples_per_sec']:.1f} ex/s, one per forward "
                     f"{part['one_per_forward_examples_per_sec']:.1f} ex/s: {part['ratio']:.2f}x; same predictions: "
                     f"{'yes' if part['same_predictions'] else 'NO'}")

    def generation(part):
        lines.append(f"{part['new_tokens']} new tokens after {part['prompt_tokens']}, greedy: KV cache "
                     f"{part['kv_cache_tokens_per_sec']:.1f} tokens/s, recompute {part['recompute_tokens_per_sec']:.1f}"
                     f": {part['ratio']:.2f}x; same tokens: {part['same_tokens_fraction']:.0%}")

    def big(part):
        one = part["one_rank"]
        measured = one.get("error") or f"peak {fmt(one['peak_memory_mib'])} MiB ({one['peak_memory_kind']})"
        lines.append(f"{part['model']} B=1, activation checkpointing, one rank: {measured}; memory model "
                     f"{fmt(part['predicted_one_rank_mib'])} MiB")
        if "fsdp" in part:
            f = part["fsdp"]
            got = f.get("error") or f"peak allocated {fmt(f['peak_allocated_mib'])} MiB"
            lines.append(f"FSDP2 on {f['world_size']} GPUs (train_gpt2.py): rank 0 {got}; memory model "
                         f"{fmt(f['predicted_mib'])} MiB")

    section("GPT-2 124M throughput" if not report["smoke"] else "throughput (tiny)", "throughput", throughput)
    section("variants", "variants", variants)
    section("fp16 + GradScaler", "fp16", fp16)
    section("train_gpt2.py against bench.py", "train_script", train)
    section("HellaSwag batching", "hellaswag", hella)
    section("generation", "generation", generation)
    section("big model memory", "big_model", big)
    return "\n".join(lines)


def run_suite(device=None, smoke=False, json_path="bench_suite.json"):
    device = device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if not smoke and not device.startswith("cuda"):
        raise ValueError("the suite measures the GPU path: run it on a GPU, or add --smoke for the CPU version")
    size = SIZES["smoke" if smoke else "gpu"]
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # the memory counters and synchronize() read the current GPU: make it this one
    start = time.perf_counter()
    args = bench_args(size, device, size["batch_sizes"][0])
    torch.set_float32_matmul_precision("high")
    report = dict(device=bench.device_name(args), torch=torch.__version__, date=date.today().isoformat(),
                  smoke=smoke, parts={})
    parts = report["parts"]
    with tempfile.TemporaryDirectory() as workdir:
        for name, run in [("throughput", lambda: part_throughput(size, device)),
                          ("variants", lambda: part_variants(size, device)),
                          ("fp16", lambda: part_fp16(size, device)),
                          ("train_script", lambda: part_train_script(size, device, parts["throughput"], workdir)),
                          ("hellaswag", lambda: part_hellaswag(size, device)),
                          ("generation", lambda: part_generation(size, device)),
                          ("big_model", lambda: part_big_model(size, device))]:
            part_start = time.perf_counter()
            try:
                parts[name] = run()
            except Exception as e:
                parts[name] = dict(error=error_line(e))
                free(args.device_type)
            if isinstance(parts[name], dict):
                parts[name]["seconds"] = time.perf_counter() - part_start
            print(f"suite: {name} done in {time.perf_counter() - part_start:.0f} s", file=sys.stderr)
    report["seconds"] = time.perf_counter() - start
    print(markdown(report))
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nJSON: {json_path}")
    return report


if __name__ == "__main__":
    # prog: the command as it is run (from the root, with -m), not the file name argparse would show
    parser = argparse.ArgumentParser(prog="python -m dev.bench_suite", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU")
    parser.add_argument("--device", help="cuda or cuda:N (default: cuda; cpu with --smoke)")
    parser.add_argument("--json", default="bench_suite.json", help="where the JSON goes")
    cli = parser.parse_args()
    try:
        run_suite(cli.device, cli.smoke, cli.json)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
