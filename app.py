"""
A web page to talk to a model and to watch its training run (Gradio).

    pip install -r requirements-app.txt && python app.py -c log/   # a run directory: its checkpoints, its run page
    python app.py -c log/model_05000.pt                            # one checkpoint
    python app.py -m gpt2                                          # OpenAI's GPT-2 (hub name or local HF directory)
    python app.py -c log/ --host 0.0.0.0 --port 7860               # reachable from other machines: only if you ask

Generate page (/): the prompt is continued token by token, with the same sampling as sample.py: the same model,
prompt, settings and seed give exactly the text sample.py prints. With a run directory a list offers its
checkpoints, newest first; it is refreshed while training writes new ones, and switching needs no restart.
Run page (/run): plot_log.py's chart and the latest numbers of the run, read from log.txt and metrics.jsonl
(which train_gpt2.py writes), refreshed on a timer, plus the samples printed at each eval. The app only reads
those files: it never touches the training process.

Safe by default: it listens on 127.0.0.1 only, makes no share link, sends no analytics and needs no network
(offline machines and machines behind a proxy variable both work). One generation runs at a time; others wait in
Gradio's queue, which shows their place. Requests are bounded (--max-new-tokens, the model's context, the sampling
ranges), and a bad value is a message on the page. The only files it opens are the checkpoint or the run
directory given on the command line, and in a run directory only its model_XXXXX.pt, log.txt and metrics.jsonl.
"""

import argparse
import codecs
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time

import numpy as np
import torch

from checkpoint import find_checkpoints, load_model, resolve_checkpoint_path
from hardware import autocast, pick_device, pick_dtype
from model import GPT2_VOCAB_SIZE, GPTConfig
from sample import encode_prompt

MAX_SAMPLES = 8  # per request: each is one row of the generation batch
MAX_PROMPT_CHARS = 100_000  # checked before tokenizing, so a huge paste costs nothing
TEMPERATURE_MAX = 2.0
CHECKPOINT_NAME = re.compile(r"model_\d+\.pt")
# written by export_hf.py --space beside the Space's copy of this file: a Space runs `python app.py` without
# arguments, and this names the model repo (and the commit) it serves
SPACE_SETTINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "space.json")

# -----------------------------------------------------------------------------
# arguments


def space_argv():
    """The arguments of a Space's app: its model from space.json, at the pinned commit; the address the Space
    gives (GRADIO_SERVER_NAME/PORT; on a Space without them, 0.0.0.0:7860, where its proxy looks)."""
    with open(SPACE_SETTINGS) as f:
        settings = json.load(f)
    host = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    return ["-m", f"{settings['model']}@{settings['revision']}", "--host", host,
            "--port", os.environ.get("GRADIO_SERVER_PORT", "7860"),
            "--max-new-tokens", str(settings.get("max_new_tokens", 500))]


def parse_args(argv=None):
    if argv is None and len(sys.argv) == 1 and os.path.isfile(SPACE_SETTINGS):
        argv = space_argv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--checkpoint", help="a run directory (its checkpoints, newest first, and its run "
                                                   "page) or one checkpoint file, e.g. log/ or log/model_05000.pt")
    source.add_argument("-m", "--model", help="OpenAI GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a "
                                              "hub repo OWNER/NAME (export_hf.py --push-to-hub) or a local "
                                              "Hugging Face-format directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the app to "
                                                            "the network")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="autocast dtype (auto: bf16 on GPUs with native bf16, fp16 on older ones, fp32 else)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="the most tokens one request may ask for")
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds between refreshes of the checkpoint "
                                                                   "list and the run page")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off: nothing "
                                                             "leaves this machine)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.refresh <= 0:
        raise ValueError(f"--refresh must be positive, got {args.refresh}")
    return args


# -----------------------------------------------------------------------------
# the models the page may load: the only paths it ever opens


class ModelSource:
    """What -c / -m named, and the one model loaded from it. A page sends back only a name from choices(); a
    name that is not in the current list (../x, /etc/passwd, a deleted checkpoint) is refused, never opened."""

    def __init__(self, checkpoint=None, model_name=None, device="cpu"):
        self.device, self.model_name = device, model_name
        self.run_dir = self.checkpoint_file = None
        # a directory, or a path that is not a .pt file yet: a run directory (training may not have made it yet)
        if checkpoint and (os.path.isdir(checkpoint) or not (os.path.exists(checkpoint) or checkpoint.endswith(".pt"))):
            self.run_dir = checkpoint
        elif checkpoint:
            self.checkpoint_file = resolve_checkpoint_path(checkpoint)  # FileNotFoundError with a sentence
        self.loaded_name, self.model = None, None

    def choices(self):
        """Names to pick from, newest checkpoint first."""
        if self.run_dir:
            return [os.path.basename(path) for _, path in reversed(find_checkpoints(self.run_dir))]
        return [os.path.basename(self.checkpoint_file)] if self.checkpoint_file else [self.model_name]

    def path_of(self, name):
        """The file (or -m name) behind a listed name; ValueError for anything else."""
        if not isinstance(name, str) or name not in self.choices():
            listed = ", ".join(self.choices()[:5]) or "none yet"
            raise ValueError(f"{str(name)[:100]!r} is not one of this app's checkpoints ({listed})")
        if self.run_dir:
            assert CHECKPOINT_NAME.fullmatch(name)  # find_checkpoints lists nothing else
            return os.path.join(self.run_dir, name)
        return self.checkpoint_file or self.model_name

    def get(self, name):
        """The model for a listed name, loaded once and kept until another name is asked for."""
        path = self.path_of(name)
        if name != self.loaded_name:
            self.model = self.loaded_name = None  # free the old weights before reading the new ones
            is_file = bool(self.run_dir or self.checkpoint_file)
            self.model = load_model(path if is_file else None, None if is_file else path, self.device)
            self.loaded_name = name
        return self.model


def describe(model, name):
    """One line about a loaded model: name, size, and its architecture where it is not GPT-2's."""
    config = model.config
    default = GPTConfig()
    arch = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd") and v != getattr(default, k)}
    extra = "".join(f", {k}={v}" for k, v in arch.items())
    return (f"**{name}**: {model.num_params() / 1e6:.2f}M parameters, {config.n_layer} layers, {config.n_head} "
            f"heads, {config.n_embd} wide, context {config.block_size}{extra}")


def model_card_line(model_name):
    """For a -m model from the hub (a Space's, say): a link to its model card, and the commit it is pinned to."""
    if not model_name or os.path.isdir(model_name):
        return None
    from fineweb import hub_endpoint
    repo, _, revision = model_name.partition("@")
    endpoint = hub_endpoint()
    pinned = f", at commit `{revision[:12]}`" if revision else ""
    return f"Model card: [{repo}]({endpoint}/{repo}){pinned}"


# -----------------------------------------------------------------------------
# generation: sample.py's sampling, streamed


def check_request(prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, cap):
    """Validate what a page (or an API client) sent; ValueError with a sentence for anything out of range.
    Returns the values as the types generation needs."""
    def number(value, name, kind=float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {str(value)[:50]!r}") from None
        if not math.isfinite(number) or (kind is int and number != int(number)):
            raise ValueError(f"{name} must be {'a whole number' if kind is int else 'finite'}, got {value}")
        return kind(number)

    if not isinstance(prompt, str):
        raise ValueError("the prompt must be text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    max_new_tokens, num_samples = number(max_new_tokens, "max new tokens", int), number(num_samples, "samples", int)
    temperature, top_k, top_p = number(temperature, "temperature"), number(top_k, "top-k", int), number(top_p, "top-p")
    seed = number(seed, "seed", int) if seed is not None and seed != "" else -1
    if not 1 <= max_new_tokens <= cap:
        raise ValueError(f"max new tokens must be in 1..{cap} (this app's --max-new-tokens), got {max_new_tokens}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be in 1..{MAX_SAMPLES}, got {num_samples}")
    if not 0 <= temperature <= TEMPERATURE_MAX:
        raise ValueError(f"temperature must be in 0..{TEMPERATURE_MAX} (0 is greedy), got {temperature}")
    if not 0 <= top_k <= GPT2_VOCAB_SIZE:
        raise ValueError(f"top-k must be in 0..{GPT2_VOCAB_SIZE} (0 turns it off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1] (1 turns it off), got {top_p}")
    if not -1 <= seed < 2 ** 63:
        raise ValueError(f"seed must be -1 (a fresh one) or in 0..2**63-1, got {seed}")
    return prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples


def render(shown_prompt, texts):
    """The page's text, exactly what sample.py prints (without its final newline)."""
    if len(texts) == 1:
        return shown_prompt + texts[0]
    return "\n".join(f"--- sample {i + 1}/{len(texts)} ---\n{shown_prompt}{text}" for i, text in enumerate(texts))


def generate_stream(model, enc, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, device,
                    dtype):
    """Yield (text so far, stats) after each new token. The tokens are sample.py's for the same seed: one batch
    of num_samples rows from model.generate_tokens, with a generator seeded as sample.py seeds it. Each row is
    decoded incrementally as sample.stream_text does, so a character split across tokens waits for its last
    byte instead of showing as '\ufffd'."""
    prompt_tokens = encode_prompt(enc, prompt)
    if len(prompt_tokens) > model.config.block_size:
        raise ValueError(f"the prompt is {len(prompt_tokens)} tokens; this model reads at most "
                         f"{model.config.block_size} (its context)")
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt_tokens], dtype=torch.long, device=device).repeat(num_samples, 1)
    sampling = dict(temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                    generator=generator)
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(num_samples)]
    texts = [""] * num_samples
    t0 = time.perf_counter()
    first_token_s = None
    new_tokens = model.generate_tokens(idx, max_new_tokens, **sampling)
    for n in range(1, max_new_tokens + 1):
        # autocast is per thread, and Gradio may run each step of this generator on another of its threads: it is
        # entered for each token, never held across a yield (the casts are the same, so the tokens are sample.py's)
        with autocast(dtype, device):
            tokens = next(new_tokens)
        for i, token in enumerate(tokens[:, 0].tolist()):
            texts[i] += decoders[i].decode(enc.decode_single_token_bytes(token))
        elapsed = time.perf_counter() - t0
        first_token_s = first_token_s or elapsed
        if n == max_new_tokens:
            texts = [text + decoder.decode(b"", final=True) for text, decoder in zip(texts, decoders)]
        yield render(prompt, texts), dict(tokens=n * num_samples, seconds=elapsed, first_token_s=first_token_s)


def format_stats(stats, seed):
    tokens_per_sec = stats["tokens"] / stats["seconds"] if stats["seconds"] > 0 else float("inf")
    return (f"{stats['tokens']} tokens in {stats['seconds']:.2f} s: **{tokens_per_sec:.1f} tokens/s** "
            f"(first token after {1000 * stats['first_token_s']:.0f} ms), seed {seed}")


# -----------------------------------------------------------------------------
# the run page: log.txt and metrics.jsonl, read only


class Run:
    """A run directory's log.txt and metrics.jsonl, read as they grow, so that watching a run costs it nothing:
    metrics.jsonl from where the last read stopped (a line still being written waits for its newline), log.txt
    only when it changed, and the chart only when log.txt changed and at most 10% of one core's time."""

    def __init__(self, run_dir):
        self.log_path, self.metrics_path = os.path.join(run_dir, "log.txt"), os.path.join(run_dir, "metrics.jsonl")
        self.offset, self.latest, self.samples = 0, {}, []  # metrics.jsonl: bytes read, last record of each kind
        self.log_key, self.streams = None, {}
        self.chart_key, self.image, self.next_chart, self.chart_version = None, None, 0.0, 0

    def read_metrics(self):
        if not os.path.isfile(self.metrics_path):
            self.offset, self.latest, self.samples = 0, {}, []
            return
        if os.path.getsize(self.metrics_path) < self.offset:  # a fresh run truncated it: start over
            self.offset, self.latest, self.samples = 0, {}, []
        with open(self.metrics_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                self.latest[record.get("kind")] = record  # after a resume, the resumed run's records come last
                if record.get("kind") == "samples":
                    self.samples = (self.samples + [record])[-5:]

    def read_log(self):
        """log.txt's streams as plot_log.py reads them, parsed again only when the file changed."""
        import plot_log

        if not os.path.isfile(self.log_path):
            self.log_key, self.streams = None, {}
            return self.streams
        stat = os.stat(self.log_path)
        if (stat.st_mtime_ns, stat.st_size) != self.log_key:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                self.streams, _, _ = plot_log.parse_log(f)
            self.log_key = (stat.st_mtime_ns, stat.st_size)
        return self.streams

    def status(self):
        """The latest numbers: from metrics.jsonl where train_gpt2.py wrote one (the last record of each kind),
        else from log.txt (older runs, build-nanogpt's: loss, val loss and HellaSwag only)."""
        status = dict(step=None, max_steps=None, train_loss=None, val_step=None, val_loss=None, hella_step=None,
                      hellaswag=None, tokens_per_sec=None, mfu=None, elapsed_s=None, eta_s=None, updated_s_ago=None,
                      samples=[])
        self.read_metrics()
        if not self.latest:
            streams = self.read_log()
            for stream, step_key, value_key in (("train", "step", "train_loss"), ("val", "val_step", "val_loss"),
                                                ("hella", "hella_step", "hellaswag")):
                if streams.get(stream):
                    status[step_key], status[value_key] = next(reversed(streams[stream].items()))
        if "train" in self.latest:
            train = self.latest["train"]
            status.update(step=train["step"], train_loss=train.get("loss"), max_steps=train.get("max_steps"),
                          tokens_per_sec=train.get("tokens_per_sec"), mfu=train.get("mfu"),
                          elapsed_s=train.get("elapsed_s"), eta_s=train.get("eta_s"))
        if "val" in self.latest:
            status.update(val_step=self.latest["val"]["step"], val_loss=self.latest["val"].get("loss"))
        if "hellaswag" in self.latest:
            status.update(hella_step=self.latest["hellaswag"]["step"], hellaswag=self.latest["hellaswag"].get("acc_norm"))
        written = [os.path.getmtime(p) for p in (self.log_path, self.metrics_path) if os.path.isfile(p)]
        status["updated_s_ago"] = time.time() - max(written) if written else None
        status["samples"] = self.samples[::-1]  # the newest evals first
        return status

    def tokens_per_step(self):
        """For the chart's tokens axis: a train record's tokens/s x its step time (the step line's tokens/s is
        the step's tokens over its time); GPT-2's 524288 when no record says."""
        import plot_log

        return plot_log.tokens_per_step_of(self.latest.get("train")) or plot_log.DEFAULT_TOKENS_PER_STEP

    def chart(self):
        """plot_log.py's figure as an RGB array, or None before log.txt has records."""
        import plot_log
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if time.monotonic() < self.next_chart:
            return self.image
        started = time.monotonic()
        streams = self.read_log()
        if self.log_key == self.chart_key:
            return self.image
        if any(streams.get(name) for name in plot_log.PLOTTED_STREAMS):
            self.read_metrics()
            # as `python plot_log.py --log RUN` draws it: OpenAI's reference lines only for a run on FineWeb-Edu
            on_fineweb_edu, _ = plot_log.trained_on_fineweb_edu(self.log_path, plot_log.read_metrics(self.log_path))
            fig = plot_log.make_figure([(plot_log.run_label(self.log_path), streams)],
                                       tokens_per_step=self.tokens_per_step(), reference=on_fineweb_edu)
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            self.image = np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
            self.chart_version += 1
        self.chart_key = self.log_key
        self.next_chart = time.monotonic() + 9 * (time.monotonic() - started)  # drawing: at most 10% of the time
        return self.image


def run_status(run_dir):
    """The run page's numbers for a run directory, read afresh (the page keeps one Run and reads as it grows)."""
    return Run(run_dir).status()


def duration(seconds):
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_status(status):
    """The run page's numbers as a Markdown table."""
    def value(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    step = "n/a" if status["step"] is None else str(status["step"])
    if status["max_steps"]:
        step += f" / {status['max_steps']}"
    at = lambda key: f" (step {status[key]})" if status[key] is not None else ""
    rows = [("step", step), ("train loss", value(status["train_loss"], ".6f")),
            ("val loss", value(status["val_loss"], ".4f") + at("val_step")),
            ("HellaSwag acc_norm", value(status["hellaswag"], ".4f") + at("hella_step")),
            ("tokens/s", value(status["tokens_per_sec"], ",.0f")),
            ("MFU", "n/a" if status["mfu"] is None else f"{100 * status['mfu']:.1f}%"),
            ("elapsed", duration(status["elapsed_s"])), ("ETA", duration(status["eta_s"])),
            ("last written", "n/a" if status["updated_s_ago"] is None else f"{duration(status['updated_s_ago'])} ago")]
    return "| run | latest |\n|---|---|\n" + "\n".join(f"| {name} | {text} |" for name, text in rows)


def format_samples(status):
    if not status["samples"]:
        return "no samples yet: train_gpt2.py writes them at each --sample-every step"
    return "\n\n".join(f"--- step {record['step']}, sample {i + 1} ---\n{text}" for record in status["samples"]
                       for i, text in enumerate(record.get("samples", [])))


# -----------------------------------------------------------------------------
# the page


def check_port_free(host, port):
    """Refuse a busy port in our words before the model loads (Gradio's own error advises `server_port`)."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"port {port} on {host} is in use or not available ({e.strerror}): pass another --port, "
                          f"e.g. --port {port + 1}") from None


def import_gradio():
    """Gradio, imported with analytics and its version check off and localhost kept off any proxy."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no analytics, no version check at start-up
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    for name in ("no_proxy", "NO_PROXY"):  # Gradio calls its own URL at start-up; a proxy must not see that
        hosts = [h for h in os.environ.get(name, "").split(",") if h]
        os.environ[name] = ",".join(hosts + [h for h in ("127.0.0.1", "localhost", "::1") if h not in hosts])
    try:
        import gradio
    except ImportError:
        raise ImportError("app.py needs Gradio: pip install -r requirements-app.txt") from None
    return gradio


def build_app(source, enc, device, dtype, max_new_tokens, refresh):
    gr = import_gradio()

    def refuse(error):
        """A user's mistake: its sentence on the page, one line on the console, no traceback."""
        print(f"app.py: refused: {error}", file=sys.stderr)
        return gr.Error(str(error), print_exception=False)

    def choices_update(current):
        names = source.choices()
        value = current if current in names else (names[0] if names else None)
        return gr.Dropdown(choices=names, value=value)

    def select(name):
        """Load the chosen model (in the device's queue) and describe it."""
        if not name:
            return f"no checkpoint in {source.run_dir} yet: the list fills as training writes model_XXXXX.pt files"
        try:
            return describe(source.get(name), name)
        except (OSError, ValueError) as e:
            raise refuse(e) from None

    def generate(name, prompt, max_tokens, temperature, top_k, top_p, seed, num_samples):
        try:
            request = check_request(prompt, max_tokens, temperature, top_k, top_p, seed, num_samples, max_new_tokens)
            name = name or next(iter(source.choices()), None)  # nothing chosen yet: the newest
            if not name:
                raise ValueError("no checkpoint to generate from yet: wait for training to write one")
            model = source.get(name)
        except (OSError, ValueError) as e:
            raise refuse(e) from None
        prompt, max_tokens, temperature, top_k, top_p, seed, num_samples = request
        seed = seed if seed >= 0 else int.from_bytes(os.urandom(4), "little")  # as sample.py without --seed
        done = 0
        try:
            for text, stats in generate_stream(model, enc, prompt, max_tokens, temperature, top_k, top_p, seed,
                                               num_samples, device, dtype):
                done = stats["tokens"] // num_samples
                yield text, format_stats(stats, seed)
        except ValueError as e:
            raise refuse(e) from None
        except GeneratorExit:  # the Stop button (or a client's cancel) closed this generator
            print(f"app.py: stopped after {done} of {max_tokens} tokens", file=sys.stderr)
            raise

    def run_page(shown):
        """The run page's contents; the chart only when it differs from the one this page shows."""
        if not source.run_dir:
            return None, "no run directory: start the app with `-c log/` to watch a run", "", None
        with run_lock:  # one Run serves every open page and the API
            status = run.status()
            image = run.chart()
        changed = run.chart_version != shown
        return (image if changed else gr.skip()), format_status(status), format_samples(status), run.chart_version

    def api_run_status() -> dict | None:
        """The run page's numbers as JSON (None without a run directory)."""
        if not source.run_dir:
            return None
        with run_lock:
            return run.status()

    def api_checkpoints() -> list[str]:
        """The names the checkpoint list offers, newest first."""
        return source.choices()

    run, run_lock = Run(source.run_dir) if source.run_dir else None, threading.Lock()
    names = source.choices()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: no font download
                              font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="GPT-2", analytics_enabled=False) as app:
        gr.Markdown("## Generate")
        card = model_card_line(source.model_name)
        if card:
            gr.Markdown(card, elem_id="model-card")
        with gr.Row():
            checkpoint = gr.Dropdown(names, value=names[0] if names else None, label="model", scale=3,
                                     allow_custom_value=True)  # checked by ModelSource, not by Gradio
            info = gr.Markdown(elem_id="model-info")
        prompt = gr.Textbox("Hello, I'm a language model,", label="prompt", lines=3, elem_id="prompt")
        with gr.Row():
            max_tokens = gr.Slider(1, max_new_tokens, value=min(100, max_new_tokens), step=1, label="max new tokens",
                                   elem_id="max-tokens")
            temperature = gr.Slider(0, TEMPERATURE_MAX, value=1.0, step=0.05, label="temperature (0: greedy)")
            top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0: off)")
            top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="top-p (1: off)")
        with gr.Row():
            seed = gr.Number(-1, precision=0, label="seed (-1: a fresh one)")
            num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples")
            run_button = gr.Button("Generate", variant="primary", elem_id="generate")
            stop_button = gr.Button("Stop", elem_id="stop")
        output = gr.Textbox(label="text", lines=12, interactive=False, elem_id="output")
        stats = gr.Markdown(elem_id="stats")
        inputs = [checkpoint, prompt, max_tokens, temperature, top_k, top_p, seed, num_samples]
        device_queue = dict(concurrency_limit=1, concurrency_id="device")  # one generation (or load) at a time
        job = run_button.click(generate, inputs, [output, stats], api_name="generate", **device_queue)
        prompt.submit(generate, inputs, [output, stats], api_visibility="private", **device_queue)
        stop_button.click(None, cancels=[job], api_visibility="private")
        checkpoint.change(select, checkpoint, info, api_visibility="private", **device_queue)  # picked or new
        # each page load lists the checkpoints as they are now (the page was built when the app started)
        app.load(choices_update, checkpoint, checkpoint, api_visibility="private").then(
            select, checkpoint, info, api_visibility="private", **device_queue)
        if source.run_dir:
            gr.Timer(refresh).tick(choices_update, checkpoint, checkpoint, api_visibility="private",
                                   show_progress="hidden")
        gr.api(api_checkpoints, api_name="checkpoints")
        gr.api(api_run_status, api_name="run_status")
    with app.route("Run", "/run"):
        gr.Markdown("## Training run" + (f": `{source.run_dir}`" if source.run_dir else ""))
        chart_image = gr.Image(label="loss and HellaSwag (plot_log.py)", interactive=False, elem_id="chart",
                               show_label=True, format="png")
        with gr.Row():
            numbers = gr.Markdown(elem_id="run-status")
            samples = gr.Textbox(label="samples at each eval, newest first", lines=12, interactive=False,
                                 elem_id="samples")
        shown = gr.State(None)  # which drawing of the chart this page shows
        page_outputs = [chart_image, numbers, samples, shown]
        app.load(run_page, shown, page_outputs, api_visibility="private")
        gr.Timer(refresh).tick(run_page, shown, page_outputs, api_visibility="private", show_progress="hidden")
    return app, theme


def main(argv=None):
    args = parse_args(argv)
    check_port_free(args.host, args.port)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    source = ModelSource(args.checkpoint, args.model, device)
    if source.run_dir and not os.path.isdir(source.run_dir):
        print(f"app.py: {source.run_dir} does not exist yet: its page fills when train_gpt2.py writes into it",
              file=sys.stderr)
    from fineweb import get_tokenizer
    enc = get_tokenizer()
    if source.choices():
        source.get(source.choices()[0])  # a bad checkpoint fails here, not on the page
    app, theme = build_app(source, enc, device, dtype, args.max_new_tokens, args.refresh)
    print(f"app.py: {args.checkpoint or args.model} on {device} ({dtype}); {len(source.choices())} checkpoint(s)",
          file=sys.stderr)
    app.queue(default_concurrency_limit=1, max_size=64)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme, show_error=False,
               ssr_mode=False, footer_links=["api"], inbrowser=False, quiet=False)


if __name__ == "__main__":
    try:
        main()
    except (ImportError, OSError, RuntimeError, ValueError) as e:  # RuntimeError: a -m model the hub cannot give
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
