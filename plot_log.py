"""
Plot a training run's log.txt: loss on the left, HellaSwag accuracy on the right, with OpenAI's checkpoints
as reference lines.

    python plot_log.py                                   # log/log.txt -> log/plot.png
    python plot_log.py --log a/log.txt b/log.txt --labels 124M-10B 124M-40B --out compare.png

A log is one record per line, `{step} {stream} {value}`, as train_gpt2.py (and build-nanogpt, unchanged) write
it. The streams drawn are `train` (loss), `val` (loss) and `hella` (acc_norm). Records of other streams in the
same shape are read and ignored, not counted as malformed, so a trainer can log more without breaking this.
Restarts: when a stream's step repeats or goes backwards, the run was resumed from an earlier checkpoint at that
step, and what the dead run logged after it (in every stream, and at that step in this stream) is superseded by
what follows. So the last value logged for a step wins, and no stale tail of a crashed run survives. Steps that
train_gpt2.py skipped (`{step} skip {loss}`: a non-finite or spiking loss) are marked along the top of the loss
panel and counted.
"""

import argparse
import math
import os
import sys
import tempfile

from matplotlib.figure import Figure  # a bare Figure draws with Agg; no pyplot, no GUI, no global state
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import blended_transform_factory

# OpenAI checkpoints, by model size. Val loss is GPT-2 on the FineWeb-Edu val shard (measured for 124M only).
GPT2_VAL_LOSS = {"124M": 3.2924, "350M": None, "774M": None, "1558M": None}
GPT2_HELLASWAG = {"124M": 0.2945, "350M": 0.3752, "774M": 0.4320, "1558M": 0.4889}
GPT3_HELLASWAG = {"124M": 0.337, "350M": 0.436, "774M": 0.510, "1558M": 0.547}  # GPT-3 paper, Table 3.2

PLOTTED_STREAMS = ("train", "val", "hella")

# -----------------------------------------------------------------------------
# reading logs


def parse_record(line):
    """'19072 val 3.0711' -> (19072, 'val', 3.0711); None when the line is not in that shape."""
    fields = line.split()
    if len(fields) != 3:
        return None
    step, stream, value = fields
    try:
        step, value = int(step), float(value)
    except ValueError:
        return None
    return (step, stream, value) if step >= 0 else None


def parse_log(lines):
    """Lines of a log -> ({stream: {step: value}} with steps ascending, number of malformed lines, first bad line
    number). Blank lines are fine. See the module docstring for how restarts are resolved."""
    streams = {}
    malformed, first_bad = 0, None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            malformed += 1
            first_bad = first_bad or number
            continue
        step, stream, value = record
        values = streams.setdefault(stream, {})
        if values and step <= next(reversed(values)):
            # this stream went back in time: a run resumed from the checkpoint at `step`. The dead run's records
            # after it are superseded, in every stream; at `step` itself only this stream's, because the evals
            # at a checkpoint's step come before the checkpoint and a resumed run need not log them again.
            # Each dict holds its steps in insertion (= ascending) order, so popping from the end is enough.
            for other in streams.values():
                while other and next(reversed(other)) >= step + (other is not values):
                    other.popitem()
        values[step] = value
    return streams, malformed, first_bad


def read_log(path):
    """The streams of one log file; raises a clear error for a missing or empty log, warns once about bad lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"log file {path} does not exist: train with train_gpt2.py first, or pass --log PATH")
    with open(path, encoding="utf-8", errors="replace") as f:
        streams, malformed, first_bad = parse_log(f)
    if malformed:
        print(f"warning: skipped {malformed} malformed line{'s' if malformed > 1 else ''} in {path} "
              f"(expected 'step stream value'; first at line {first_bad})", file=sys.stderr)
    if not any(streams.get(name) for name in PLOTTED_STREAMS):
        raise ValueError(f"log file {path} has no train, val or hella records (lines like '100 train 3.2841')")
    return streams


def run_label(path):
    """A legend name for a log: its folder for the usual .../log.txt, else the file name without extension."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "log.txt":
        return os.path.basename(os.path.dirname(path)) or "log"
    return os.path.splitext(os.path.basename(path))[0]


# -----------------------------------------------------------------------------
# drawing


def ema(values, weight):
    """Exponential moving average, debiased like TensorBoard's smoothing so the start is not pulled to 0.
    Non-finite values (a diverged step) are passed through as nan and do not poison the average."""
    out, average, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(float("nan"))
            continue
        count += 1
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** count))
    return out


def human_count(x, _pos=None):
    """Tick label for a token count: 0, 500K, 2.5M, 10B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def best(values, pick):
    """(step, value) of the min/max finite value of {step: value}, or None."""
    finite = [(value, step) for step, value in values.items() if math.isfinite(value)]
    if not finite:
        return None
    value, step = pick(finite)
    return step, value


def add_tokens_axis(ax, tokens_per_step):
    tokens = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
    tokens.xaxis.set_major_formatter(FuncFormatter(human_count))
    tokens.set_xlabel(f"tokens ({human_count(tokens_per_step)} per step)")


def loss_after_warmup(streams, smooth):
    """The (smoothed) train loss 10% of the way into the run, a little raised: a good top for the loss axis."""
    losses = list(streams.get("train", {}).values())
    if not losses:
        return 0.0
    smoothed = ema(losses, smooth) if smooth else losses
    value = smoothed[len(smoothed) // 10]
    return 1.1 * value if math.isfinite(value) else 0.0


def make_figure(runs, sz="124M", smooth=0.95, tokens_per_step=524288, loss_max=4.0, loss_baseline=None):
    """runs: [(label, streams)] as read_log returns them -> a matplotlib Figure with the two panels.
    loss_baseline overrides GPT-2's val loss line for the size (None: the known value, if any)."""
    fig = Figure(figsize=(16, 6), layout="constrained")
    loss_ax, hella_ax = fig.subplots(1, 2, sharex=True)  # one step axis: evals line up with the loss
    colors = [f"C{i}" for i in range(10) if i not in (2, 3)]  # red and green are kept for the baselines

    # panel 1: train loss (raw and smoothed) and val loss, log scale, with OpenAI GPT-2's val loss
    all_losses = []
    for i, (label, streams) in enumerate(runs):
        color = colors[i % len(colors)]
        train, val = streams.get("train", {}), streams.get("val", {})
        if train:
            steps, losses = list(train), list(train.values())
            loss_ax.plot(steps, losses, color=color, alpha=0.25 if smooth else 1.0, linewidth=0.8,
                         label=f"{label} train loss")
            if smooth:
                loss_ax.plot(steps, ema(losses, smooth), color=color, linewidth=1.5,
                             label=f"{label} train loss (smoothed {smooth})")
            all_losses += ema(losses, smooth) if smooth else losses
        if val:
            loss_ax.plot(list(val), list(val.values()), color=color, linestyle="--", marker="o", markersize=3,
                         label=f"{label} val loss")
            all_losses += list(val.values())
        skipped = streams.get("skip", {})
        if skipped:  # steps whose update train_gpt2.py skipped: markers along the top edge (the loss may be nan)
            on_top_edge = blended_transform_factory(loss_ax.transData, loss_ax.transAxes)
            loss_ax.plot(list(skipped), [1.0] * len(skipped), transform=on_top_edge, clip_on=False, color=color,
                         linestyle="none", marker="v", label=f"{label} skipped steps ({len(skipped)})")
    baseline = loss_baseline if loss_baseline is not None else GPT2_VAL_LOSS[sz]
    if baseline is not None:
        loss_ax.axhline(baseline, color="C3", linestyle="--", label=f"OpenAI GPT-2 ({sz}) checkpoint val loss")
    loss_ax.set_yscale("log")
    for axis_ticks in (loss_ax.yaxis.set_major_formatter, loss_ax.yaxis.set_minor_formatter):
        axis_ticks(FuncFormatter(lambda y, _pos: f"{y:g}"))  # 3.5, not 3.5x10^0
    finite_losses = [x for x in all_losses if math.isfinite(x) and x > 0]
    # zoom in on the part of training that matters, as build-nanogpt does with 4.0; but a short run that is still
    # above loss_max 10% of the way in would vanish off the top, so the axis then starts from that loss
    if loss_max and finite_losses and min(finite_losses) < loss_max:
        loss_ax.set_ylim(top=max([loss_max] + [loss_after_warmup(streams, smooth) for _, streams in runs]))
    loss_ax.set_xlabel("steps")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.legend()
    add_tokens_axis(loss_ax, tokens_per_step)

    # panel 2: HellaSwag acc_norm, with OpenAI GPT-2 and GPT-3 of the same size
    for i, (label, streams) in enumerate(runs):
        hella = streams.get("hella", {})
        if hella:
            hella_ax.plot(list(hella), list(hella.values()), color=colors[i % len(colors)], marker="o",
                          markersize=3, label=label)
    if not any(streams.get("hella") for _, streams in runs):
        hella_ax.text(0.5, 0.5, "no HellaSwag records in the log", ha="center", va="center",
                      transform=hella_ax.transAxes, color="gray")
    hella_ax.axhline(GPT2_HELLASWAG[sz], color="C3", linestyle="--", label=f"OpenAI GPT-2 ({sz}) checkpoint")
    hella_ax.axhline(GPT3_HELLASWAG[sz], color="C2", linestyle="--", label=f"OpenAI GPT-3 ({sz}) checkpoint")
    hella_ax.set_xlabel("steps")
    hella_ax.set_ylabel("accuracy (acc_norm)")
    hella_ax.set_title("HellaSwag eval")
    hella_ax.legend()
    add_tokens_axis(hella_ax, tokens_per_step)
    return fig


def save_png(fig, path):
    """Write the PNG atomically: a temp file in the same folder, then os.replace, so no reader sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".plot_", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes the file private; a plot is an ordinary file
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def summary(label, streams):
    """One line: min train loss, min val loss and max HellaSwag, each with its step."""
    parts = []
    for name, stream, pick in (("min train loss", "train", min), ("min val loss", "val", min),
                               ("max HellaSwag", "hella", max)):
        found = best(streams.get(stream, {}), pick)
        parts.append(f"{name} {found[1]:.4f} (step {found[0]})" if found else f"{name} n/a")
    if streams.get("skip"):
        parts.append(f"{len(streams['skip'])} skipped step{'s' if len(streams['skip']) > 1 else ''}")
    return f"{label}: " + " | ".join(parts)


# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--log", nargs="+", default=["log/log.txt"], help="one or more log files, overlaid")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend names, one per --log; None: each log's folder name")
    parser.add_argument("--out", default="log/plot.png", help="PNG to write")
    parser.add_argument("--sz", default="124M", choices=list(GPT2_HELLASWAG),
                        help="model size, for the OpenAI reference lines")
    parser.add_argument("--smooth", type=float, default=0.95,
                        help="EMA weight for the smoothed train loss, in [0, 1); 0 draws the raw loss only")
    parser.add_argument("--tokens-per-step", type=int, default=524288,
                        help="tokens per optimizer step, for the tokens axis (2**19 = GPT-3's 0.5M batch)")
    parser.add_argument("--loss-max", type=float, default=4.0,
                        help="top of the loss axis once the run is below it (raised for a run still above it 10%% of the "
                             "way in); 0 for automatic")
    parser.add_argument("--loss-baseline", type=float, default=None,
                        help="GPT-2 val loss line to draw (default: the measured value for --sz, known for 124M)")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.log):
        raise ValueError(f"got {len(args.labels)} --labels for {len(args.log)} --log files; give one label per log")
    if not 0 <= args.smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.tokens_per_step <= 0:
        raise ValueError(f"--tokens-per-step must be positive, got {args.tokens_per_step}")
    return args


def main(argv=None):
    args = parse_args(argv)
    labels = args.labels or [run_label(path) for path in args.log]
    runs = [(label, read_log(path)) for label, path in zip(labels, args.log)]
    for label, streams in runs:
        print(summary(label, streams))
    fig = make_figure(runs, sz=args.sz, smooth=args.smooth, tokens_per_step=args.tokens_per_step,
                      loss_max=args.loss_max, loss_baseline=args.loss_baseline)
    save_png(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
