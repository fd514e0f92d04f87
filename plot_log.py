"""
Plot a training run's log.txt: loss, and HellaSwag accuracy beside it when the log has HellaSwag records, with
OpenAI's checkpoints as reference lines when the run trained on FineWeb-Edu.

    python plot_log.py                                   # log/log.txt -> log/plot.png
    python plot_log.py --log log/demo                    # log/demo/log.txt -> log/demo/plot.png
    python plot_log.py --log a/log.txt b/log.txt --labels 124M-10B 124M-40B --out compare.png

A log is one record per line, `{step} {stream} {value}`, as train_gpt2.py (and build-nanogpt, unchanged) write
it. The streams drawn are `train` (loss), `val` (loss) and `hella` (acc_norm). Records of other streams in the
same shape are read and ignored, not counted as malformed, so a trainer can log more without breaking this.
Restarts: when a stream's step repeats or goes backwards, the run was resumed from an earlier checkpoint at that
step, and what the dead run logged after it (in every stream, and at that step in this stream) is superseded by
what follows. So the last value logged for a step wins, and no stale tail of a crashed run survives. Steps that
train_gpt2.py skipped (`{step} skip {loss}`: a non-finite or spiking loss) are marked along the top of the loss
panel and counted.

Reference lines: GPT-2's val loss was measured on FineWeb-Edu's val shard, so it (and, with it, the HellaSwag
scores of OpenAI's models) is drawn only for runs that trained on FineWeb-Edu (--reference auto). What a run
trained on is read from the metrics.jsonl train_gpt2.py writes beside log.txt: a record holding the run's `args`
names its data_dir, and fineweb.py's fineweb_progress.json (or download_progress.json) in that folder names the
dataset; a folder without either counts as FineWeb-Edu only under its default name, edu_fineweb10B. A run whose
metrics.jsonl records no data_dir is not assumed to be FineWeb-Edu. A log.txt with no metrics.jsonl beside it is
build-nanogpt's, which trains on FineWeb-Edu.
"""

import argparse
import json
import math
import os
import re
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
DEFAULT_TOKENS_PER_STEP = 524288  # GPT-3's 0.5M batch, build-nanogpt's: for logs that do not say
SMOOTH_SPAN = 0.05  # default smoothing: the EMA's span is this fraction of the run's train records

# what a run trained on: fineweb.py's records beside the shards, and the folder name both fineweb.py's default to
PROGRESS_FILE, DOWNLOAD_PROGRESS_FILE = "fineweb_progress.json", "download_progress.json"
FINEWEB_EDU_DIR = "edu_fineweb10B"
FINEWEB_EDU_NAME = re.compile(r"fineweb[-_]?edu|edu[-_]?fineweb", re.IGNORECASE)  # HuggingFaceFW/fineweb-edu, ...

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


def log_file(path):
    """--log accepts a run directory too: its log.txt."""
    return os.path.join(path, "log.txt") if os.path.isdir(path) else path


def default_out(log_path):
    """Where a log's figure goes unless --out says: beside it, plot.png for a log.txt, else the log's name.png."""
    directory, name = os.path.split(log_path)
    out = os.path.join(directory, "plot.png" if name == "log.txt" else os.path.splitext(name)[0] + ".png")
    if os.path.abspath(out) == os.path.abspath(log_path):
        raise ValueError(f"the figure for {log_path} would overwrite it; pass --out PATH")
    return out


# -----------------------------------------------------------------------------
# what a run trained on, from the metrics.jsonl train_gpt2.py writes beside log.txt (build-nanogpt writes none)


def read_json(path):
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_metrics(log_path):
    """(args, last train record) from the metrics.jsonl beside a log, or None when there is none. args is the
    last record's `args` dict (the run's flags: data_dir, log_dir, ...), None when no record holds one."""
    path = os.path.join(os.path.dirname(os.path.abspath(log_path)), "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    args, last_train = None, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"args"' in line:  # cheap test first: a long run's file is mostly train records
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("args"), dict):
                    args = record["args"]
            elif '"kind": "train"' in line and line.endswith("\n"):  # not a line still being written
                last_train = line
    try:
        train = json.loads(last_train) if last_train else None
    except ValueError:
        train = None
    return args, train if isinstance(train, dict) else None


def tokens_per_step_of(train_record):
    """Tokens per optimizer step from a train record of metrics.jsonl: its tokens/s x its step time (the step
    line's tokens/s is the step's tokens over its time); None when the record does not say."""
    if not train_record or not train_record.get("tokens_per_sec") or not train_record.get("dt_ms"):
        return None
    return max(1, round(train_record["tokens_per_sec"] * train_record["dt_ms"] / 1000))


def recorded_dataset(data_dir):
    """The dataset a shard folder was made from, as fineweb.py recorded it there, or None without a record."""
    progress = read_json(os.path.join(data_dir, PROGRESS_FILE))
    source = progress.get("config", {}).get("source") if isinstance(progress, dict) else None
    if isinstance(source, list) and source:
        if source[0] == "hf" and len(source) > 1:
            return str(source[1])  # e.g. HuggingFaceFW/fineweb-edu
        if source[0] == "demo":
            return "the Python standard library's source, fineweb.py --demo"
        return f"{source[0]} files" if source[0] == "local" else str(source[0])
    download = read_json(os.path.join(data_dir, DOWNLOAD_PROGRESS_FILE))
    if isinstance(download, dict) and download.get("repo"):
        return str(download["repo"])  # tokenized shards from the hub, e.g. kjj0/fineweb10B-gpt2 (FineWeb, not -Edu)
    return None


def data_dir_candidates(log_path, args):
    """Where the recorded data_dir may be: relative to the directory training ran in (the log's folder with the
    recorded --log-dir cut off its end: log/demo -> .), then relative to this one."""
    data_dir = str(args["data_dir"])
    if os.path.isabs(data_dir):
        return [data_dir]
    candidates = []
    log_dir = os.path.dirname(os.path.abspath(log_path))
    recorded_log_dir = os.path.normpath(str(args.get("log_dir") or "."))
    if not os.path.isabs(recorded_log_dir) and log_dir.endswith(os.sep + recorded_log_dir):
        candidates.append(os.path.join(log_dir[:-len(recorded_log_dir)], data_dir))
    candidates.append(os.path.abspath(data_dir))
    return candidates


def trained_on_fineweb_edu(log_path, metrics):
    """(True or False, why): did this run train on FineWeb-Edu, the data GPT-2's val loss line was measured on?
    metrics: read_metrics(log_path)."""
    if metrics is None:
        # a log.txt alone is build-nanogpt's (train_gpt2.py writes metrics.jsonl beside it), and build-nanogpt only
        # trains on its fineweb.py's FineWeb-Edu shards: the reference lines are what its runs are measured against
        return True, "a log without metrics.jsonl: build-nanogpt's, on FineWeb-Edu"
    args = metrics[0] or {}
    if not args.get("data_dir"):
        return False, "its metrics.jsonl does not record the data it trained on"
    data_dir = str(args["data_dir"])
    for candidate in data_dir_candidates(log_path, args):
        if not os.path.isdir(candidate):
            continue
        dataset = recorded_dataset(candidate)
        if dataset is not None:
            return bool(FINEWEB_EDU_NAME.search(dataset)), f"data {data_dir}: {dataset}"
        break
    if os.path.basename(os.path.normpath(data_dir)) == FINEWEB_EDU_DIR:  # the default of fineweb.py and build-nanogpt's
        return True, f"data {data_dir}: FineWeb-Edu's default folder"
    return False, f"data {data_dir}: no record of its dataset there"


# -----------------------------------------------------------------------------
# drawing


def ema(values, weight):
    """Exponential moving average with Adam's bias correction: the average of the values so far, value i weighted
    by weight^(steps since i), so the first output is the first value and the start is not pulled towards 0.
    Written as the update m += (1 - weight) / (1 - weight^t) * (value - m), the same as Adam's v_t / (1 - weight^t)
    for v_t = weight * v_{t-1} + (1 - weight) * value, and exact at t = 1. Non-finite values (a diverged step) are
    passed through as nan and do not poison the average."""
    out, average, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(float("nan"))
            continue
        count += 1
        average += (1 - weight) / (1 - weight ** count) * (value - average)
        out.append(average)
    return out


def auto_smooth(n_records):
    """The EMA weight whose span, (1 + weight) / (1 - weight) records, is SMOOTH_SPAN of a run's n_records (0: the
    run is too short to smooth). The average then lags the loss by about half a span: the same small fraction
    of the x axis for a 150-step demo and a 19073-step run."""
    span = SMOOTH_SPAN * n_records
    return max(0.0, (span - 1) / (span + 1))


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


def loss_after_warmup(losses, smooth):
    """The (smoothed) train loss 10% of the way into the run, a little raised: a good top for the loss axis."""
    if not losses:
        return 0.0
    smoothed = ema(losses, smooth) if smooth else losses
    value = smoothed[len(smoothed) // 10]
    return 1.1 * value if math.isfinite(value) else 0.0


def make_figure(runs, sz="124M", smooth=None, tokens_per_step=DEFAULT_TOKENS_PER_STEP, loss_max=4.0,
                loss_baseline=None, reference=True):
    """runs: [(label, streams)] as read_log returns them -> a matplotlib Figure: the loss panel, and a HellaSwag
    panel beside it when a run has HellaSwag records. smooth: the EMA weight (None: auto_smooth for each run's
    length; 0: raw loss only). tokens_per_step None: no tokens axis. reference: draw OpenAI's checkpoints (GPT-2's
    val loss, GPT-2 and GPT-3 on HellaSwag); loss_baseline overrides GPT-2's val loss for the size (None: the
    known value, if any)."""
    has_hella = any(streams.get("hella") for _, streams in runs)
    fig = Figure(figsize=(16, 6) if has_hella else (10, 6), layout="constrained")
    axes = fig.subplots(1, 2 if has_hella else 1, sharex=True, squeeze=False)[0]  # one step axis for both panels
    loss_ax = axes[0]
    colors = [f"C{i}" for i in range(10) if i not in (2, 3)]  # red and green are kept for the baselines

    # panel 1: train loss (raw and smoothed) and val loss, log scale, with OpenAI GPT-2's val loss
    all_losses, loss_tops = [], []
    for i, (label, streams) in enumerate(runs):
        color = colors[i % len(colors)]
        train, val = streams.get("train", {}), streams.get("val", {})
        if train:
            steps, losses = list(train), list(train.values())
            weight = auto_smooth(len(losses)) if smooth is None else smooth
            loss_ax.plot(steps, losses, color=color, alpha=0.25 if weight else 1.0, linewidth=0.8,
                         label=f"{label} train loss")
            if weight:
                smoothed = ema(losses, weight)
                loss_ax.plot(steps, smoothed, color=color, linewidth=1.5,
                             label=f"{label} train loss (smoothed {weight:.3g})")
                all_losses += smoothed
            else:
                all_losses += losses
            loss_tops.append(loss_after_warmup(losses, weight))
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
    if reference and baseline is not None:
        loss_ax.axhline(baseline, color="C3", linestyle="--",
                        label=f"OpenAI GPT-2 ({sz}) checkpoint val loss (FineWeb-Edu)")
    loss_ax.set_yscale("log")
    for axis_ticks in (loss_ax.yaxis.set_major_formatter, loss_ax.yaxis.set_minor_formatter):
        axis_ticks(FuncFormatter(lambda y, _pos: f"{y:g}"))  # 3.5, not 3.5x10^0
    finite_losses = [x for x in all_losses if math.isfinite(x) and x > 0]
    # zoom in on the part of training that matters, as build-nanogpt does with 4.0; but a short run that is still
    # above loss_max 10% of the way in would vanish off the top, so the axis then starts from that loss
    if loss_max and finite_losses and min(finite_losses) < loss_max:
        loss_ax.set_ylim(top=max([loss_max] + loss_tops))
    loss_ax.set_xlabel("steps")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.legend()
    if tokens_per_step:
        add_tokens_axis(loss_ax, tokens_per_step)
    if not has_hella:  # no empty panel: a run without HellaSwag evals gets the loss alone
        return fig

    # panel 2: HellaSwag acc_norm, with OpenAI GPT-2 and GPT-3 of the same size
    hella_ax = axes[1]
    for i, (label, streams) in enumerate(runs):
        hella = streams.get("hella", {})
        if hella:
            hella_ax.plot(list(hella), list(hella.values()), color=colors[i % len(colors)], marker="o",
                          markersize=3, label=label)
    if reference:
        hella_ax.axhline(GPT2_HELLASWAG[sz], color="C3", linestyle="--", label=f"OpenAI GPT-2 ({sz}) checkpoint")
        hella_ax.axhline(GPT3_HELLASWAG[sz], color="C2", linestyle="--", label=f"OpenAI GPT-3 ({sz}) checkpoint")
    hella_ax.set_xlabel("steps")
    hella_ax.set_ylabel("accuracy (acc_norm)")
    hella_ax.set_title("HellaSwag eval")
    hella_ax.legend()
    if tokens_per_step:
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
    parser.add_argument("--log", nargs="+", default=["log/log.txt"],
                        help="one or more log files, or run directories (their log.txt), overlaid")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend names, one per --log; None: each log's folder name")
    parser.add_argument("--out", default=None, help="PNG to write; None: beside the (first) --log, plot.png for a "
                        "log.txt (log/demo/log.txt -> log/demo/plot.png), else the log's name with .png")
    parser.add_argument("--sz", default="124M", choices=list(GPT2_HELLASWAG),
                        help="model size, for the OpenAI reference lines")
    parser.add_argument("--reference", default="auto", choices=["auto", "gpt2", "none"],
                        help="OpenAI's checkpoints as reference lines (GPT-2's FineWeb-Edu val loss, GPT-2 and GPT-3 "
                             "on HellaSwag): gpt2 always, none never, auto when every run trained on FineWeb-Edu as "
                             "its metrics.jsonl records it (a log.txt without one: build-nanogpt's, FineWeb-Edu)")
    parser.add_argument("--smooth", type=float, default=None,
                        help="EMA weight for the smoothed train loss, in [0, 1); 0 draws the raw loss only; None: "
                             f"for each run, the weight whose span is {SMOOTH_SPAN * 100:g}%% of its train records")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="tokens per optimizer step, for the tokens axis; None: from each run's metrics.jsonl, "
                             f"{DEFAULT_TOKENS_PER_STEP} (2**19, GPT-3's 0.5M batch) for a log without one, and no "
                             "tokens axis when the runs differ")
    parser.add_argument("--loss-max", type=float, default=4.0,
                        help="top of the loss axis once the run is below it (raised for a run still above it 10%% of the "
                             "way in); 0 for automatic")
    parser.add_argument("--loss-baseline", type=float, default=None,
                        help="GPT-2 val loss line's value, when the reference lines are drawn; None: the measured "
                             "value for --sz (known for 124M)")
    args = parser.parse_args(argv)
    args.log = [log_file(path) for path in args.log]
    if args.labels is not None and len(args.labels) != len(args.log):
        raise ValueError(f"got {len(args.labels)} --labels for {len(args.log)} --log files; give one label per log")
    if args.smooth is not None and not 0 <= args.smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.tokens_per_step is not None and args.tokens_per_step <= 0:
        raise ValueError(f"--tokens-per-step must be positive, got {args.tokens_per_step}")
    return args


def main(argv=None):
    args = parse_args(argv)
    labels = args.labels or [run_label(path) for path in args.log]
    out = args.out or default_out(args.log[0])
    runs = [(label, read_log(path)) for label, path in zip(labels, args.log)]
    for label, streams in runs:
        print(summary(label, streams))
    metrics = [read_metrics(path) for path in args.log]

    reference = args.reference == "gpt2"
    if args.reference == "auto":
        decisions = [trained_on_fineweb_edu(path, run_metrics) for path, run_metrics in zip(args.log, metrics)]
        reference = all(on_fineweb_edu for on_fineweb_edu, _ in decisions)
        for label, (on_fineweb_edu, why) in zip(labels, decisions):
            if not on_fineweb_edu:
                print(f"{label}: no OpenAI reference lines ({why}; --reference gpt2 draws them)")

    tokens_per_step = args.tokens_per_step
    if tokens_per_step is None:
        # a log without metrics.jsonl is build-nanogpt's, at its 2**19 tokens per step
        known = {DEFAULT_TOKENS_PER_STEP if run_metrics is None else tokens_per_step_of(run_metrics[1])
                 for run_metrics in metrics}
        tokens_per_step = known.pop() if len(known) == 1 else None
        if tokens_per_step is None:
            print("no tokens axis: the runs' tokens per step differ or are not recorded (pass --tokens-per-step)")

    fig = make_figure(runs, sz=args.sz, smooth=args.smooth, tokens_per_step=tokens_per_step,
                      loss_max=args.loss_max, loss_baseline=args.loss_baseline, reference=reference)
    save_png(fig, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
