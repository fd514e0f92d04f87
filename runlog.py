"""
The record of a training run, written by train_gpt2.py (rank 0) in one place and read by plot_log.py and app.py:

    log.txt        build-nanogpt's format, one record per line: "{step} train {loss:.6f}", "{step} val {loss:.4f}",
                   "{step} hella {acc_norm:.4f}", and "{step} skip {loss:.6f}" for a skipped update
    metrics.jsonl  one JSON object per line, {"step", "kind", ...fields}: kind config (the resolved flags, data_dir
                   among them), val, hellaswag (both conventions), samples, train (loss, lr, norm, dt_ms,
                   tokens_per_sec, mfu, elapsed_s, eta_s, max_steps)
    W&B            the same numbers under train/, val/ and hellaswag/, and the samples as a table (--wandb)

and the step line printed to the console.
"""

import json
import math
import os
import sys

from hardware import format_mfu

HELLASWAG_SCORES = ("acc", "acc_norm", "harness_acc", "harness_acc_norm")  # both conventions, as logged


def format_duration(seconds):
    """3723.4 -> '1:02:03'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class RunLog:
    """Rank 0's record of the run, written in one place: the printed line, log.txt (build-nanogpt's format),
    metrics.jsonl (every field, as strict JSON, for app.py and plot_log.py) and W&B."""

    def __init__(self, log_dir, append, wandb_run):
        mode = "a" if append else "w"  # a fresh run starts fresh logs, a resumed one appends
        self.log_txt = open(os.path.join(log_dir, "log.txt"), mode, buffering=1)  # line-buffered: on disk at once
        self.metrics = open(os.path.join(log_dir, "metrics.jsonl"), mode, buffering=1, encoding="utf-8")
        self.wandb_run = wandb_run

    def log(self, step, kind, **fields):
        """One record of kind config, val, hellaswag, samples or train, to every sink that keeps that kind."""
        wandb_metrics = {}
        if kind == "val":
            print(f"step {step:5d} | val loss {fields['loss']:.4f}")
            self.log_txt.write(f"{step} val {fields['loss']:.4f}\n")
            wandb_metrics = {"val/loss": fields["loss"]}
        if kind == "hellaswag":
            print(f"step {step:5d} | hellaswag acc {fields['acc']:.4f} acc_norm {fields['acc_norm']:.4f} harness acc "
                  f"{fields['harness_acc']:.4f} acc_norm {fields['harness_acc_norm']:.4f} (n={fields['n']})")
            self.log_txt.write(f"{step} hella {fields['acc_norm']:.4f}\n")
            wandb_metrics = {f"hellaswag/{k}": fields[k] for k in HELLASWAG_SCORES}
        if kind == "samples":
            wandb_metrics = {"samples": fields["samples"]}  # print_samples has printed them
        if kind == "train":
            skipped, bad_steps = fields.pop("skipped"), fields.pop("bad_steps")
            eta = "estimating" if fields["eta_s"] is None else format_duration(fields["eta_s"])
            print(f"step {step:5d} | loss {fields['loss']:.6f} | lr {fields['lr']:.4e} | norm {fields['norm']:.4f} | "
                  f"dt {fields['dt_ms']:.2f}ms | tok/s {fields['tokens_per_sec']:.0f} | "
                  f"mfu {format_mfu(fields['mfu'])} | elapsed {format_duration(fields['elapsed_s'])} | eta {eta}")
            if skipped:
                print(f"warning: step {step}: loss {fields['loss']}, grad norm {fields['norm']}: {skipped}, update "
                      f"skipped ({bad_steps} in a row)", file=sys.stderr)
            self.log_txt.write(f"{step} {'skip' if skipped else 'train'} {fields['loss']:.6f}\n")
            wandb_metrics = {f"train/{k}": fields[k] for k in ("loss", "lr", "norm", "dt_ms", "tokens_per_sec", "mfu")}
            wandb_metrics["train/skipped"] = int(bool(skipped))
        # a non-finite number (a skipped step's loss) is written as null, so every line is strict JSON
        fields = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}
        self.metrics.write(json.dumps({"step": step, "kind": kind, **fields}) + "\n")
        self.log_wandb(step, wandb_metrics)

    def log_wandb(self, step, metrics):
        """None values are left out, a list of strings becomes a table. A resumed run re-runs the steps after its
        checkpoint, which the W&B run may already have (with the same values): those are skipped."""
        if self.wandb_run is None or not metrics or step < self.wandb_run.step:
            return
        import wandb
        self.wandb_run.log({key: wandb.Table(columns=["sample"], data=[[text] for text in value])
                            if isinstance(value, list) else value for key, value in metrics.items()
                            if value is not None}, step=step)
