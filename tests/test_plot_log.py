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
    assert smoothed[0] == 4.0 and math.isnan(smoothed[1]) and 2.0 < smoothed[2] < 4.0


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
    assert "OpenAI GPT-2 (350M) checkpoint val loss" not in loss_lines  # not measured for 350M: no made-up line
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
    assert loss_lines["OpenAI GPT-2 (124M) checkpoint val loss"].get_ydata()[0] == 3.2924
    assert list(loss_lines["run skipped steps (2)"].get_xdata()) == [200, 201]
    assert plot_log.summary("run", streams).endswith("| 2 skipped steps")


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
