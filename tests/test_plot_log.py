import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

import plot_log
from plot_log import make_figure, parse_log, read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_plot_log(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "plot_log.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def train_loss(step, offset=0.0):
    return 3.1 + 8 * math.exp(-step / 40) + 0.05 * (step % 3) + offset  # noisy enough for the smoothing to show


def val_loss(step, offset=0.0):
    return 3.0 + 8 * math.exp(-step / 40) + offset


def write_run_log(path, steps=200, eval_every=50, start=0, offset=0.0):
    """A build-nanogpt-shaped log: val and hella before train at eval steps, train loss every step."""
    with open(path, "a") as f:
        for step in range(start, steps):
            if step % eval_every == 0 or step == steps - 1:
                f.write(f"{step} val {val_loss(step, offset):.4f}\n")
                f.write(f"{step} hella {0.25 + 0.0002 * step - offset / 10:.4f}\n")
            f.write(f"{step} train {train_loss(step, offset):.6f}\n")
    return path


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


HF_FINEWEB_EDU = ["hf", "HuggingFaceFW/fineweb-edu", "sample-10BT", "text", False]  # fineweb.py's default source


def write_shard_record(data_dir, source):
    """What fineweb.py leaves beside its shards: fineweb_progress.json, whose config names the corpus."""
    os.makedirs(data_dir, exist_ok=True)
    progress = {"config": {"source": source, "shard_size": 500000, "max_tokens": None, "prefix": "edufineweb"},
                "starts": [[0, 0], [52, 1860]], "finished": True, "tokens": 500000}
    with open(os.path.join(data_dir, "fineweb_progress.json"), "w") as f:
        json.dump(progress, f)


def write_train_gpt2_run(run_dir, steps=150, eval_every=50, hella=False, args=None, tokens_per_step=512):
    """A run directory as train_gpt2.py leaves it: log.txt, and metrics.jsonl beside it (the demo's: evals and
    train records, no HellaSwag), opened by a record of the run's args if given."""
    os.makedirs(run_dir, exist_ok=True)
    records = [] if args is None else [{"step": 0, "kind": "config", "args": args}]
    with open(os.path.join(run_dir, "log.txt"), "w") as log:
        for step in range(steps):
            if step % eval_every == 0 or step == steps - 1:
                log.write(f"{step} val {val_loss(step):.4f}\n")
                records.append({"step": step, "kind": "val", "loss": val_loss(step)})
                if hella:
                    log.write(f"{step} hella {0.25 + 0.0002 * step:.4f}\n")
            log.write(f"{step} train {train_loss(step):.6f}\n")
            dt_ms = 400.0 + step % 7  # the step time varies; tokens/s x step time does not
            records.append({"step": step, "kind": "train", "loss": train_loss(step), "lr": 1e-3, "norm": 1.0,
                            "dt_ms": dt_ms, "tokens_per_sec": tokens_per_step / (dt_ms / 1000), "mfu": None,
                            "elapsed_s": step * 0.4, "eta_s": None, "max_steps": steps})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return os.path.join(run_dir, "log.txt")


def color_pixels(png, color):
    """How many pixels of the PNG are (nearly) this matplotlib color: C3 red is GPT-2's lines, C2 green GPT-3's,
    colors that neither axes, text nor the runs (C0 first) use."""
    image = imread(png)[:, :, :3]
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(image - rgb).max(axis=2) < 0.05).sum())


RED, GREEN = "#d62728", "#2ca02c"  # matplotlib's C3 and C2


# -----------------------------------------------------------------------------
# parsing

def test_parse_reads_build_nanogpt_lines_as_they_are():
    streams, malformed, _ = parse_log(["0 val 10.9874\n", "0 hella 0.2484\n", "0 train 10.955116\n",
                                       "1 train 9.812333\n", "\n"])
    assert malformed == 0
    assert streams == {"val": {0: 10.9874}, "hella": {0: 0.2484}, "train": {0: 10.955116, 1: 9.812333}}


def test_repeated_step_keeps_the_last_value():
    streams, _, _ = parse_log(["0 train 5.0", "1 train 4.0", "1 train 3.9", "2 train 3.5"])
    assert streams["train"] == {0: 5.0, 1: 3.9, 2: 3.5}


def test_restart_from_an_earlier_checkpoint_supersedes_the_dead_runs_tail():
    # the first run got to step 7 and died; the second resumed from the checkpoint at step 4 and reached step 5
    first = ["0 val 5.0", "0 train 5.5"] + [f"{s} train {5 - 0.1 * s}" for s in range(1, 8)] + ["4 val 4.6", "6 val 4.4"]
    first.sort(key=lambda line: int(line.split()[0]))
    second = ["4 val 4.65", "4 train 4.55", "5 train 4.45"]
    streams, malformed, _ = parse_log(first + second)
    assert malformed == 0
    assert streams["train"] == {0: 5.5, 1: 4.9, 2: 4.8, 3: 4.7, 4: 4.55, 5: 4.45}  # 6 and 7 were the dead run's
    assert streams["val"] == {0: 5.0, 4: 4.65}  # the dead run's val at 6 is gone too
    assert list(streams["train"]) == sorted(streams["train"])


def test_resume_keeps_the_evals_logged_before_the_checkpoint():
    # train_gpt2.py: evals at step 4, checkpoint 4, train 4..6, crash; the resumed run starts with train 4
    # and does not evaluate step 4 again, so the dead run's evals at 4 stand while its train 4..6 do not
    lines = ["4 val 4.6", "4 hella 0.26", "4 train 4.5", "5 train 4.4", "6 val 4.3", "6 train 4.2",
             "4 train 4.51", "5 skip nan", "6 train 4.31"]
    streams, malformed, _ = parse_log(lines)
    assert malformed == 0
    assert streams["train"] == {4: 4.51, 6: 4.31}
    assert streams["val"] == {4: 4.6} and streams["hella"] == {4: 0.26}
    assert list(streams["skip"]) == [5] and math.isnan(streams["skip"][5])


def test_malformed_lines_are_counted_and_unknown_streams_are_not():
    lines = ["0 train 5.0", "garbage", "1 train", "x train 4.0", "2 train abc", "3 train 4.0 extra",
             "4 lr 6e-4", "5 train 3.0", "-1 train 2.0"]
    streams, malformed, first_bad = parse_log(lines)
    assert malformed == 6 and first_bad == 2
    assert streams["train"] == {0: 5.0, 5: 3.0}
    assert streams["lr"] == {4: 6e-4}


def test_read_log_errors_and_single_warning(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no train, val or hella records"):
        read_log(str(empty))
    log = tmp_path / "log.txt"
    log.write_text("0 train 5.0\nbad line here now\n1 train 4.0\n12 tr")
    assert read_log(str(log))["train"] == {0: 5.0, 1: 4.0}
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 2 malformed lines" in err and "line 2" in err


def test_ema_smoothing_is_debiased_and_skips_non_finite():
    assert plot_log.ema([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    smoothed = plot_log.ema([4.0, float("nan"), 2.0], 0.5)
    assert smoothed[0] == 4.0 and math.isnan(smoothed[1]) and smoothed[2] == pytest.approx((0.5 * 4 + 2) / 1.5)


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.765, 0.95, 0.999])
def test_ema_equals_adams_bias_corrected_average(weight):
    rng = np.random.default_rng(0)
    values = list(3 + 8 * np.exp(-np.arange(300) / 40) + rng.normal(0, 0.3, 300))
    smoothed = plot_log.ema(values, weight)
    assert smoothed[0] == values[0]  # exactly: bias correction leaves nothing of the zero start
    # independently: Adam's first moment v_t = w v_{t-1} + (1 - w) x_t, divided by 1 - w^t ...
    v, adam = 0.0, []
    for t, x in enumerate(values, 1):
        v = weight * v + (1 - weight) * x
        adam.append(v / (1 - weight ** t))
    assert smoothed == pytest.approx(adam, rel=1e-9)
    # ... which is the weighted mean of the values so far, value i weighted w^(t-i)
    for t in (1, 2, 10, 299):
        weights = weight ** np.arange(t - 1, -1, -1.0)
        assert smoothed[t - 1] == pytest.approx(np.dot(weights, values[:t]) / weights.sum(), rel=1e-9)


def test_default_smoothing_lags_the_same_small_fraction_of_any_run():
    assert plot_log.auto_smooth(150) == pytest.approx(6.5 / 8.5)  # span 7.5 records = 5% of 150
    assert plot_log.auto_smooth(10) == 0.0  # too short to smooth: the raw loss alone
    for n in (150, 1500, 19073):
        ramp = [float(step) for step in range(n)]  # a loss falling at a steady rate, in steps
        lag = ramp[-1] - plot_log.ema(ramp, plot_log.auto_smooth(n))[-1]
        assert 0.02 < lag / n < 0.03  # about half the span; 0.95 lagged 19 steps = 13% of the demo's 150


# -----------------------------------------------------------------------------
# the figure

def test_make_figure_puts_every_series_on_its_panel(tmp_path):
    runs = [("a", read_log(write_run_log(tmp_path / "a.txt"))),
            ("b", read_log(write_run_log(tmp_path / "b.txt", offset=0.2)))]
    fig = make_figure(runs, sz="350M", smooth=0.9, tokens_per_step=1000)
    loss_ax, hella_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and loss_ax.get_title() == "Loss"
    loss_lines = lines_by_label(loss_ax)
    for label in ("a", "b"):
        raw = loss_lines[f"{label} train loss"]
        assert list(raw.get_xdata()) == list(range(200))
        assert raw.get_alpha() < 0.5  # faint under the smoothed line
        smoothed = np.asarray(loss_lines[f"{label} train loss (smoothed 0.9)"].get_ydata())
        assert np.std(np.diff(smoothed[100:])) < np.std(np.diff(np.asarray(raw.get_ydata())[100:]))
        assert list(loss_lines[f"{label} val loss"].get_xdata()) == [0, 50, 100, 150, 199]
    assert not [name for name in loss_lines if "OpenAI" in name]  # not measured for 350M: no made-up line
    # this short run is still far above 4.0 10% of the way in, so the axis top follows its loss there
    top = max(1.1 * plot_log.ema(list(run[1]["train"].values()), 0.9)[20] for run in runs)
    assert top > 4.0 and loss_ax.get_ylim()[1] == pytest.approx(top)

    hella_lines = lines_by_label(hella_ax)
    assert list(hella_lines["a"].get_ydata()) == [0.25, 0.26, 0.27, 0.28, 0.2898]
    assert list(hella_lines["b"].get_ydata()) == [0.23, 0.24, 0.25, 0.26, 0.2698]
    assert hella_lines["OpenAI GPT-2 (350M) checkpoint"].get_ydata()[0] == 0.3752
    assert hella_lines["OpenAI GPT-3 (350M) checkpoint"].get_ydata()[0] == 0.436
    tokens_axis = loss_ax.child_axes[0]  # the secondary x axis: steps * tokens_per_step
    assert tokens_axis.get_xlabel() == "tokens (1K per step)"


def test_make_figure_draws_the_124m_val_loss_baseline_and_skipped_steps(tmp_path):
    log = write_run_log(tmp_path / "log.txt")
    with open(log, "a") as f:
        f.write("200 skip nan\n201 skip 9.5\n")
    streams = read_log(log)
    fig = make_figure([("run", streams)], sz="124M")
    loss_lines = lines_by_label(fig.axes[0])
    assert loss_lines["OpenAI GPT-2 (124M) checkpoint val loss (FineWeb-Edu)"].get_ydata()[0] == 3.2924
    assert list(loss_lines["run skipped steps (2)"].get_xdata()) == [200, 201]
    assert plot_log.summary("run", streams).endswith("| 2 skipped steps")


def test_a_log_without_hellaswag_gets_one_panel_and_reference_lines_only_when_asked(tmp_path):
    streams = read_log(write_train_gpt2_run(tmp_path / "run"))
    assert "hella" not in streams
    fig = make_figure([("demo", streams)], reference=False, tokens_per_step=512)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "Loss"  # no empty HellaSwag panel beside it
    loss_lines = lines_by_label(fig.axes[0])
    assert not [name for name in loss_lines if "OpenAI" in name]
    assert "demo train loss (smoothed 0.765)" in loss_lines  # the span is 5% of the 150 train records
    assert fig.axes[0].child_axes[0].get_xlabel() == "tokens (512 per step)"
    with_reference = make_figure([("demo", streams)], reference=True, tokens_per_step=None)
    assert "OpenAI GPT-2 (124M) checkpoint val loss (FineWeb-Edu)" in lines_by_label(with_reference.axes[0])
    assert with_reference.axes[0].child_axes == []  # no tokens axis when tokens per step are not known
    fig = make_figure([("demo", streams), ("b", read_log(write_run_log(tmp_path / "b.txt")))], reference=False)
    assert len(fig.axes) == 2  # one run with HellaSwag records brings the panel
    assert list(lines_by_label(fig.axes[1])) == ["b"]  # and without references, only the run's line


def test_what_a_run_trained_on_decides_the_reference_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shard_record(tmp_path / "edu", HF_FINEWEB_EDU)
    write_shard_record(tmp_path / "demo_shards", ["demo", "3.11.7"])
    write_shard_record(tmp_path / "mine", ["local", "text", [["corpus.jsonl", 10, 0]]])
    os.makedirs(tmp_path / "edu_fineweb10B")
    write_shard_record(tmp_path / "edu_fineweb10B_local", ["local", "text", []])
    os.makedirs(tmp_path / "downloaded")
    (tmp_path / "downloaded" / "download_progress.json").write_text('{"repo": "kjj0/fineweb10B-gpt2", "files": {}}')

    def decide(name, args):
        log = write_train_gpt2_run(tmp_path / "log" / name, steps=3, args=args)
        return plot_log.trained_on_fineweb_edu(log, plot_log.read_metrics(log))

    assert decide("edu", {"data_dir": "edu", "log_dir": "log/edu"}) == (True, "data edu: HuggingFaceFW/fineweb-edu")
    assert decide("demo", {"data_dir": "demo_shards", "log_dir": "log/demo"})[0] is False  # edufineweb_* shards too
    assert decide("local", {"data_dir": "mine", "log_dir": "log/local"})[0] is False
    assert decide("fineweb", {"data_dir": "downloaded", "log_dir": "log/fineweb"}) == (
        False, "data downloaded: kjj0/fineweb10B-gpt2")  # FineWeb, not FineWeb-Edu
    # no record beside the shards (build-nanogpt's fineweb.py writes none): the default folder name decides
    assert decide("nanogpt-shards", {"data_dir": "edu_fineweb10B", "log_dir": "log/nanogpt-shards"})[0] is True
    assert decide("gone", {"data_dir": "/elsewhere/edu_fineweb10B/"})[0] is True
    assert decide("other", {"data_dir": "other_shards", "log_dir": "log/other"}) == (
        False, "data other_shards: no record of its dataset there")
    # the record beats the name
    assert decide("renamed", {"data_dir": "edu_fineweb10B_local", "log_dir": "log/renamed"})[0] is False
    # the demo today: metrics.jsonl without the run's args, so its data is unknown
    assert decide("unrecorded", None) == (False, "its metrics.jsonl does not record the data it trained on")
    # build-nanogpt: log.txt alone
    assert plot_log.trained_on_fineweb_edu(write_run_log(tmp_path / "log.txt"), None)[0] is True


def test_a_relative_data_dir_is_found_from_where_training_ran(tmp_path, monkeypatch):
    write_shard_record(tmp_path / "repo" / "shards", HF_FINEWEB_EDU)
    write_shard_record(tmp_path / "shards", ["demo", "3.11.7"])  # a decoy where plot_log.py runs
    log = write_train_gpt2_run(tmp_path / "repo" / "log" / "run", steps=3,
                               args={"data_dir": "shards", "log_dir": "log/run"})
    monkeypatch.chdir(tmp_path)
    assert plot_log.trained_on_fineweb_edu(log, plot_log.read_metrics(log)) == (
        True, "data shards: HuggingFaceFW/fineweb-edu")


def test_read_metrics_takes_the_last_args_and_train_record(tmp_path):
    log = write_train_gpt2_run(tmp_path, steps=5, args={"data_dir": "a"})
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a resumed run records its args again; a line mid-write
        f.write(json.dumps({"step": 5, "kind": "config", "args": {"data_dir": "b"}}) + "\n")
        f.write('{"step": 5, "kind": "train", "loss": 3.0, "dt_ms": 4')
    args, train = plot_log.read_metrics(log)
    assert args == {"data_dir": "b"} and train["step"] == 4
    assert plot_log.tokens_per_step_of(train) == 512
    assert plot_log.tokens_per_step_of(None) is None and plot_log.tokens_per_step_of({"loss": 3.0}) is None
    assert plot_log.read_metrics(write_run_log(tmp_path / "elsewhere.txt")) is not None  # same folder
    os.makedirs(tmp_path / "nanogpt")
    assert plot_log.read_metrics(write_run_log(tmp_path / "nanogpt" / "log.txt")) is None


# -----------------------------------------------------------------------------
# the CLI, as a user runs it

def test_cli_plots_a_log_with_restarts_and_garbage(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log = log_dir / "log.txt"
    write_run_log(log, steps=180, offset=-0.5)  # the first run: better losses, then it dies at step 179
    with open(log, "a") as f:
        f.write("180 tra")  # half-written line from the crash
        f.write("\n\x00\x00 garbage\n")
    write_run_log(log, steps=160, start=100)  # resumed from the checkpoint at step 100, now at step 159
    result = run_plot_log(cwd=tmp_path)  # default paths: log/log.txt -> log/plot.png
    assert result.returncode == 0, result.stderr
    assert "skipped 2 malformed lines" in result.stderr
    # every step from 100 on comes from the resumed run; the dead run's better tail (to step 179) is gone:
    # else min train/val would be its ~2.75/2.65 and max HellaSwag its 0.33 at step 150
    expected = (f"log: min train loss {train_loss(159):.4f} (step 159) | "
                f"min val loss {val_loss(159):.4f} (step 159) | max HellaSwag 0.3100 (step 50)")
    assert expected in result.stdout

    png = log_dir / "plot.png"
    image = imread(png)[:, :, :3]
    assert image.shape[:2] == (600, 1600)
    assert [p.name for p in log_dir.iterdir() if p.name.endswith(".tmp")] == []  # atomic write left no temp file
    umask = os.umask(0)
    os.umask(umask)
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600
    # both panels carry the run's data: each half has many pixels of the run's color (C0, matplotlib's blue),
    # which neither axes, text nor the red/green baselines use
    run_color = np.array([0x1F, 0x77, 0xB4]) / 255
    for half in (image[:, :800], image[:, 800:]):
        is_run_color = np.abs(half - run_color).max(axis=2) < 0.05
        assert is_run_color.sum() > 500


def test_cli_overlays_several_logs_with_labels(tmp_path):
    a = write_run_log(tmp_path / "a.txt")
    b = write_run_log(tmp_path / "b.txt", offset=0.5)
    out = tmp_path / "plots" / "compare.png"
    result = run_plot_log("--log", str(a), str(b), "--labels", "base", "worse", "--out", str(out), "--sz", "774M")
    assert result.returncode == 0, result.stderr
    min_train = min(train_loss(s) for s in range(200))
    assert f"base: min train loss {min_train:.4f}" in result.stdout
    assert f"worse: min train loss {min_train + 0.5:.4f}" in result.stdout
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(tmp_path):
    result = run_plot_log("--log", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "p.png"))
    assert result.returncode == 2
    assert result.stderr == f"error: log file {tmp_path / 'nope.txt'} does not exist: train with train_gpt2.py " \
                            f"first, or pass --log PATH\n"
    assert not (tmp_path / "p.png").exists()


def test_bad_input_raises_before_anything_is_written(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    out = str(tmp_path / "p.png")
    with pytest.raises(ValueError, match="no train, val or hella records"):
        plot_log.main(["--log", str(tmp_path / "empty.txt"), "--out", out])
    with pytest.raises(ValueError, match="one label per log"):
        plot_log.main(["--log", str(tmp_path / "empty.txt"), "--labels", "x", "y", "--out", out])
    with pytest.raises(ValueError, match="--smooth must be in"):
        plot_log.main(["--smooth", "1", "--out", out])
    assert not os.path.exists(out)


def test_loss_axis_tops_at_loss_max_once_the_run_is_below_it(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("".join(f"{step} train {11.0 if step < 5 else 3.5 - step / 10000:.6f}\n" for step in range(1000)))
    fig = make_figure([("run", read_log(str(log)))], smooth=0.9, tokens_per_step=1000)
    assert fig.axes[0].get_ylim()[1] == pytest.approx(4.0)  # as build-nanogpt: the first steps' 11 is off the top


def test_cli_draws_the_demo_as_it_is(tmp_path):
    # the demo's run: train_gpt2.py's log.txt and metrics.jsonl (which records no data dir), no HellaSwag
    write_shard_record(tmp_path / "demo_shards", ["demo", "3.11.7"])
    write_train_gpt2_run(tmp_path / "log" / "demo")
    result = run_plot_log("--log", "log/demo/log.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("demo: no OpenAI reference lines (its metrics.jsonl does not record the data it trained on; "
            "--reference gpt2 draws them)") in result.stdout
    png = tmp_path / "log" / "demo" / "plot.png"  # beside the log, not log/plot.png
    assert f"wrote log/demo/plot.png" in result.stdout and not (tmp_path / "log" / "plot.png").exists()
    assert imread(png).shape[:2] == (600, 1000)  # one panel
    assert color_pixels(png, RED) == 0  # no GPT-2 val loss line under a 3.5M model trained on Python

    forced = run_plot_log("--log", "log/demo", "--reference", "gpt2", "--out", "forced.png", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "no OpenAI reference lines" not in forced.stdout and color_pixels(tmp_path / "forced.png", RED) > 500

    # once train_gpt2.py records its args, the demo's data dir says what it is
    write_train_gpt2_run(tmp_path / "log" / "demo", args={"data_dir": "demo_shards", "log_dir": "log/demo"})
    result = run_plot_log("--log", "log/demo", cwd=tmp_path)
    assert ("demo: no OpenAI reference lines (data demo_shards: the Python standard library's source, fineweb.py "
            "--demo; --reference gpt2 draws them)") in result.stdout
    assert color_pixels(png, RED) == 0


def test_cli_draws_reference_lines_for_fineweb_edu_runs(tmp_path):
    write_shard_record(tmp_path / "edu_fineweb10B", HF_FINEWEB_EDU)
    write_train_gpt2_run(tmp_path / "log", hella=True, args={"data_dir": "edu_fineweb10B", "log_dir": "log"})
    result = run_plot_log(cwd=tmp_path)  # the default: log/log.txt -> log/plot.png
    assert result.returncode == 0, result.stderr
    assert "reference lines" not in result.stdout
    png = tmp_path / "log" / "plot.png"
    assert imread(png).shape[:2] == (600, 1600)  # two panels
    assert color_pixels(png, RED) > 1000 and color_pixels(png, GREEN) > 500  # GPT-2 loss + HellaSwag, GPT-3

    # build-nanogpt's log (log.txt alone) is a FineWeb-Edu run by construction
    nanogpt = tmp_path / "nanogpt"
    nanogpt.mkdir()
    write_run_log(nanogpt / "log.txt")
    result = run_plot_log("--log", str(nanogpt), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert color_pixels(nanogpt / "plot.png", RED) > 1000
    result = run_plot_log("--log", str(nanogpt), "--reference", "none", cwd=tmp_path)
    assert color_pixels(nanogpt / "plot.png", RED) == 0 and color_pixels(nanogpt / "plot.png", GREEN) == 0

    # overlaid with a run of unknown data, the lines would claim a comparison for it too: auto leaves them out
    write_train_gpt2_run(tmp_path / "log" / "demo")
    result = run_plot_log("--log", "log", "log/demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo: no OpenAI reference lines" in result.stdout and "log: no OpenAI" not in result.stdout
    assert color_pixels(png, RED) == 0  # beside the first log


def test_cli_writes_each_figure_beside_its_log(tmp_path):
    for name, offset in (("a", 0.0), ("b", 0.5)):
        (tmp_path / name).mkdir()
        write_run_log(tmp_path / name / "log.txt", offset=offset)
        assert run_plot_log("--log", f"{name}/log.txt", cwd=tmp_path).returncode == 0
    a, b = (tmp_path / "a" / "plot.png").read_bytes(), (tmp_path / "b" / "plot.png").read_bytes()
    assert a != b  # plotting b did not overwrite a's figure
    write_run_log(tmp_path / "a" / "seed2.txt")
    result = run_plot_log("--log", "a/seed2.txt", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "a" / "seed2.png").exists()
    assert (tmp_path / "a" / "plot.png").read_bytes() == a
    with pytest.raises(ValueError, match="would overwrite it"):
        plot_log.default_out(str(tmp_path / "a" / "odd.png"))


def test_cli_tokens_axis_comes_from_the_runs(tmp_path, capsys):
    write_train_gpt2_run(tmp_path / "small", steps=20, tokens_per_step=512)
    write_train_gpt2_run(tmp_path / "big", steps=20, tokens_per_step=4096)
    out = str(tmp_path / "p.png")
    plot_log.main(["--log", str(tmp_path / "small"), str(tmp_path / "big"), "--out", out])
    assert "no tokens axis: the runs' tokens per step differ" in capsys.readouterr().out
    plot_log.main(["--log", str(tmp_path / "small"), str(tmp_path / "big"), "--out", out, "--tokens-per-step", "9"])
    assert "no tokens axis" not in capsys.readouterr().out
