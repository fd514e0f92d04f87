"""
app.py as a user meets it: the app runs as a subprocess on 127.0.0.1 on a free port, with a proxy variable that
points at a listener which must never see a connection; gradio_client talks to its API, and a real headless
Chromium (Debian's chromium + chromium-driver, through Selenium) clicks through both pages. One app process
serves the whole module; the model is tiny.

README's screenshots come from the browser test pointed at a demo run:
    python fineweb.py --demo && python train_gpt2.py --demo
    APP_SCREENSHOT_RUN=log/demo APP_SCREENSHOT_DIR=docs python -m pytest tests/test_app.py -k browser
"""
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import gradio_client
import numpy as np
import pytest
import torch
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import sample
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
CAP = 5000  # the app's --max-new-tokens: enough for a generation that is still running when it is stopped
LOCAL = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1280"]


def write_checkpoint(path, seed):
    """A tiny model as train_gpt2.py saves it: a temporary file, then renamed."""
    torch.manual_seed(seed)
    config = GPTConfig(**TINY)
    torch.save({"model": GPT(config).state_dict(), "config": dataclasses.asdict(config), "step": 10}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


LOG = "0 train 10.950000\n0 val 10.9400\n1 train 10.100000\n0 hella 0.2500\n2 train 9.712345\n2 val 9.8765\n"
METRICS = [
    dict(step=0, kind="val", loss=10.94),
    dict(step=0, kind="hellaswag", acc=0.24, acc_norm=0.25, harness_acc=0.23, harness_acc_norm=0.26, n=100),
    dict(step=0, kind="train", loss=10.95, lr=1e-4, norm=2.0, dt_ms=400.0, tokens_per_sec=1280.0, mfu=None,
         elapsed_s=None, eta_s=None, max_steps=10),
    dict(step=1, kind="train", loss=10.1, lr=2e-4, norm=1.5, dt_ms=410.0, tokens_per_sec=1248.78, mfu=0.0123,
         elapsed_s=5.5, eta_s=3725.0, max_steps=10),
    dict(step=2, kind="samples", samples=["Hello, I'm a language model, and", "Hello, I'm a language model, so"]),
    dict(step=2, kind="train", loss=9.712345, lr=3e-4, norm=1.25, dt_ms=400.0, tokens_per_sec=1280.0, mfu=0.0125,
         elapsed_s=6.0, eta_s=3600.0, max_steps=10),
    dict(step=2, kind="val", loss=9.8765),
]


class ProxyTrap:
    """A TCP listener standing in for a proxy: it counts the connections anything makes to it."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(source_flags, proxy_url, log_path, extra=()):
    """app.py on a free port; returns (process, url) once its page answers (deadline 180 s)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update({name: proxy_url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")})
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GRADIO_TEMP_DIR=os.path.join(os.path.dirname(log_path),
                                                                                       "gradio_tmp"))
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "app.py"), *source_flags, "--port", str(port),
                             "--max-new-tokens", str(CAP), "--refresh", "0.5", "--device", "cpu", *extra],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, log_path, "app.py", 180)
    return proc, url


def wait_until_serving(proc, url, log_path, name, seconds):
    """Until the page at url answers 200; an AssertionError with the log's end if the process exits or the
    deadline passes (the process is then killed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # this process: no proxy either
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            if opener.open(url, timeout=5).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"{name} did not answer within {seconds} s:\n{open(log_path).read()[-3000:]}")


def stop_app(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    write_checkpoint(directory / "model_00010.pt", seed=0)
    (directory / "log.txt").write_text(LOG)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS) + '{"step": 3, "ki')
    return directory


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A valid checkpoint the app was not told about."""
    directory = tmp_path_factory.mktemp("outside")
    write_checkpoint(directory / "model_00099.pt", seed=1)
    return directory / "model_00099.pt"


@pytest.fixture(scope="module")
def proxy():
    trap = ProxyTrap()
    yield trap
    trap.server.close()


@pytest.fixture(scope="module")
def app(run_dir, proxy, tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("app") / "app.log")
    proc, url = start_app(["-c", str(run_dir)], proxy.url, log_path)
    yield dict(url=url, log=log_path, proc=proc)
    stop_app(proc)


@pytest.fixture(scope="module")
def client(app):
    for name, value in LOCAL.items():
        os.environ.setdefault(name, value)
    return gradio_client.Client(app["url"], verbose=False, analytics_enabled=False, download_files=False)


def generate(client, name="model_00010.pt", prompt="Hello, I'm a language model,", max_new_tokens=20,
             temperature=1.0, top_k=50, top_p=1.0, seed=42, num_samples=1):
    text, stats = client.predict(name, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples,
                                 api_name="/generate")
    return text, stats


# -----------------------------------------------------------------------------
# generation


@pytest.mark.parametrize("num_samples, temperature, top_k, top_p", [(1, 0.8, 40, 0.9), (3, 1.0, 50, 1.0)])
def test_generation_equals_sample_py(client, run_dir, capsys, num_samples, temperature, top_k, top_p):
    prompt = "The meaning of life is"
    text, stats = generate(client, prompt=prompt, max_new_tokens=30, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=123, num_samples=num_samples)
    flags = ["-c", str(run_dir / "model_00010.pt"), "--prompt", prompt, "--max-new-tokens", "30", "--temperature",
             str(temperature), "--top-k", str(top_k), "--seed", "123", "--num-samples", str(num_samples),
             "--device", "cpu"] + (["--top-p", str(top_p)] if top_p < 1 else [])
    sample.main(flags)
    assert text + "\n" == capsys.readouterr().out
    assert f"{30 * num_samples} tokens in" in stats and "tokens/s" in stats and "seed 123" in stats


def test_streaming_yields_partial_outputs_that_grow(client):
    job = client.submit("model_00010.pt", "Hello", 40, 1.0, 0, 1.0, 7, 1, api_name="/generate")
    final_text, _ = job.result(timeout=120)
    texts = [text for text, _ in job.outputs()]
    assert len(texts) >= 10 and texts[-1] == final_text  # one update per token (some updates may merge)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert "\ufffd" not in "".join(texts[:-1]) or "\ufffd" in final_text  # no half characters mid-stream


# the sliders' own range checks (Gradio's messages) come first; the app checks everything again (its messages)
@pytest.mark.parametrize("field, value, message", [
    ("max_new_tokens", 0, "Value 0 is less than minimum value 1."),
    ("max_new_tokens", CAP + 1, f"Value {CAP + 1} is greater than maximum value {CAP}."),
    ("temperature", -0.5, "Value -0.5 is less than minimum value 0."),
    ("temperature", 2.5, "Value 2.5 is greater than maximum value 2.0."),
    ("top_k", -1, "Value -1 is less than minimum value 0."),
    ("top_k", 2.5, "top-k must be a whole number, got 2.5"),
    ("top_p", 0, "Value 0 is less than minimum value 0.01."),
    ("top_p", 1.5, "Value 1.5 is greater than maximum value 1."),
    ("num_samples", 9, "Value 9 is greater than maximum value 8."),
    ("seed", -2, "seed must be -1 (a fresh one) or in 0..2**63-1, got -2"),
    ("prompt", "hello " * 65, "the prompt is 66 tokens; this model reads at most 64 (its context)"),
    ("prompt", "x" * 100_001, "the prompt has 100,001 characters; the limit is 100,000"),
])
def test_out_of_range_requests_get_a_clear_message(client, field, value, message):
    with pytest.raises(AppError) as error:
        generate(client, **{field: value})
    assert str(error.value) == message


def test_one_generation_at_a_time_and_stop_frees_the_device(client, app):
    job = client.submit("model_00010.pt", "Hello", CAP, 1.0, 0, 1.0, 1, 1, api_name="/generate")
    deadline = time.monotonic() + 120
    while not job.outputs():  # streaming has begun
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.05)
    waiting = client.submit("model_00010.pt", "Hi", 5, 1.0, 50, 1.0, 1, 1, api_name="/generate")
    while (status := waiting.status()).code != Status.IN_QUEUE:  # it waits, and is told its place
        assert time.monotonic() < deadline and not job.done(), status
        time.sleep(0.05)
    assert status.rank == 0 and not waiting.done()
    job.cancel()  # what the Stop button does
    assert waiting.result(timeout=120)[0].startswith("Hi")
    deadline = time.monotonic() + 120
    while "app.py: stopped after" not in open(app["log"]).read():
        assert time.monotonic() < deadline, "the generation was not stopped"
        time.sleep(0.1)
    stopped = re.search(r"app\.py: stopped after (\d+) of (\d+) tokens", open(app["log"]).read())
    assert 0 < int(stopped[1]) < CAP and int(stopped[2]) == CAP
    text, _ = generate(client, max_new_tokens=5)  # the device is free again
    assert text.startswith("Hello, I'm a language model,")


@pytest.mark.parametrize("name", ["../outside/model_00099.pt", "OUTSIDE", "/etc/passwd", "model_00010.pt/..",
                                  "./model_00010.pt", "log.txt", "metrics.jsonl", ""])
def test_no_path_from_the_page_is_opened(client, run_dir, outside, name):
    name = str(outside) if name == "OUTSIDE" else name
    name = os.path.relpath(outside, run_dir) if name.startswith("../outside") else name
    if name == "":  # nothing chosen: the newest checkpoint of the run directory, never anything else
        text, _ = generate(client, name="", max_new_tokens=5)
        assert text == generate(client, name="model_00010.pt", max_new_tokens=5)[0]
        return
    with pytest.raises(AppError) as error:
        generate(client, name=name, max_new_tokens=5)
    assert "is not one of this app's checkpoints" in str(error.value)


def test_gradio_does_not_serve_the_run_directory(app, run_dir, outside):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in (run_dir / "model_00010.pt", run_dir / "log.txt", outside, "/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as error:
            opener.open(f"{app['url']}gradio_api/file={path}", timeout=30)
        assert error.value.code in (403, 404)


def test_a_checkpoint_written_while_the_app_runs_is_listed_first_and_used(client, run_dir):
    assert client.predict(api_name="/checkpoints") == ["model_00010.pt"]
    write_checkpoint(run_dir / "model_00020.pt", seed=5)
    deadline = time.monotonic() + 60
    while client.predict(api_name="/checkpoints") != ["model_00020.pt", "model_00010.pt"]:
        assert time.monotonic() < deadline, client.predict(api_name="/checkpoints")
        time.sleep(0.2)
    new, old = (generate(client, name=name, seed=3)[0] for name in ("model_00020.pt", "model_00010.pt"))
    assert new != old  # other weights, switched without a restart
    os.remove(run_dir / "model_00020.pt")  # and a pruned checkpoint leaves the list
    deadline = time.monotonic() + 60
    while client.predict(api_name="/checkpoints") != ["model_00010.pt"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(AppError):
        generate(client, name="model_00020.pt")


# -----------------------------------------------------------------------------
# the run page


def test_run_page_numbers_equal_the_logs(client):
    status = client.predict(api_name="/run_status")
    last_train = METRICS[5]
    assert status["step"] == 2 and status["max_steps"] == 10
    assert status["train_loss"] == last_train["loss"] == 9.712345  # log.txt's last train line, unrounded
    assert (status["val_step"], status["val_loss"]) == (2, 9.8765)
    assert (status["hella_step"], status["hellaswag"]) == (0, 0.25)
    assert status["tokens_per_sec"] == 1280.0 and status["mfu"] == 0.0125
    assert status["elapsed_s"] == 6.0 and status["eta_s"] == 3600.0
    assert [s["step"] for s in status["samples"]] == [2] and status["samples"][0]["samples"] == METRICS[4]["samples"]


def test_run_reads_metrics_as_they_grow(tmp_path):
    import app
    path = tmp_path / "metrics.jsonl"
    train = dict(METRICS[2])
    path.write_text(json.dumps(train) + "\n" + '{"step": 1, "kind": "tr')  # the trainer is mid-line
    run = app.Run(str(tmp_path))
    assert run.status()["step"] == 0
    with open(path, "a") as f:  # the line is finished, and a resumed run goes back to step 1
        f.write('ain", "loss": 5.0}\n' + json.dumps({**train, "step": 1, "loss": 4.5}) + "\n")
    assert (run.status()["step"], run.status()["train_loss"]) == (1, 4.5)
    path.write_text(json.dumps({**train, "step": 0, "loss": 9.0}) + "\n")  # a fresh run in the same directory
    assert (run.status()["step"], run.status()["train_loss"]) == (0, 9.0)
    assert run.tokens_per_step() == 512  # 1280 tokens/s x 400 ms


def test_run_status_reads_log_txt_alone(tmp_path):
    import app
    (tmp_path / "log.txt").write_text(LOG)
    status = app.run_status(str(tmp_path))
    assert (status["step"], status["train_loss"], status["val_loss"], status["hellaswag"]) == (2, 9.712345, 9.8765,
                                                                                               0.25)
    assert status["tokens_per_sec"] is None and status["eta_s"] is None
    table = app.format_status(status)
    assert "| train loss | 9.712345 |" in table and "| ETA | n/a |" in table and "| val loss | 9.8765 (step 2) |" in table


def test_run_chart_is_plot_logs_figure_for_what_the_run_trained_on(tmp_path):
    import app
    red = np.array([0xD6, 0x27, 0x28])  # matplotlib's C3: OpenAI GPT-2's reference lines, nothing else
    # a demo-like run: no HellaSwag, and a metrics.jsonl that does not record the data: one panel, no GPT-2 lines
    (tmp_path / "log.txt").write_text("".join(line + "\n" for line in LOG.splitlines() if " hella " not in line))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS if r["kind"] != "hellaswag"))
    image = app.Run(str(tmp_path)).chart()
    assert image.shape == (600, 1000, 3)
    assert (np.abs(image.astype(int) - red).max(axis=2) < 13).sum() == 0
    # a run on FineWeb-Edu, as its args and fineweb.py's record beside the shards say: both panels, with the lines
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "fineweb_progress.json").write_text(json.dumps({"config": {"source": ["hf", "HuggingFaceFW/fineweb-edu",
                                                                                     "sample-10BT", "text", False]}}))
    (tmp_path / "log.txt").write_text(LOG)
    args = {"step": 0, "kind": "config", "args": {"data_dir": str(shards)}}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [args] + METRICS))
    image = app.Run(str(tmp_path)).chart()
    assert image.shape == (600, 1600, 3)
    assert (np.abs(image.astype(int) - red).max(axis=2) < 13).sum() > 1000


# -----------------------------------------------------------------------------
# a real browser


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium and chromium-driver
INSTALL_CHROMIUM = "sudo apt-get update && sudo apt-get install -y chromium chromium-driver"


def chromium(tmp_path):
    """Headless Debian chromium through its chromium-driver. Without them the test fails (never skips) in one line
    that names the install command, not with Selenium's NoSuchDriverException after a driver download that cannot
    work offline."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the browser test needs Debian's chromium and chromium-driver: "
                    f"{INSTALL_CHROMIUM}", pytrace=False)
    for name, value in LOCAL.items():
        os.environ.setdefault(name, value)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.parametrize("missing", ["CHROMIUM", "CHROMEDRIVER"])
def test_a_missing_browser_fails_in_one_line_naming_the_install_command(monkeypatch, tmp_path, missing):
    monkeypatch.setattr(sys.modules[__name__], missing, str(tmp_path / "absent"))
    with pytest.raises(pytest.fail.Exception) as failure:
        chromium(tmp_path)
    assert str(failure.value) == (f"{tmp_path / 'absent'} not found: the browser test needs Debian's chromium and "
                                  f"chromium-driver: sudo apt-get update && sudo apt-get install -y chromium "
                                  f"chromium-driver")
    assert not failure.value.pytrace


def wait_for(driver, condition, timeout=90):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


@pytest.mark.slow
def test_browser_generates_text_and_shows_the_run_chart(app, proxy, run_dir, tmp_path):
    url, shots = app["url"], tmp_path
    demo_run = os.environ.get("APP_SCREENSHOT_RUN")
    if demo_run:  # README's screenshots: the same test on a demo run
        proc, url = start_app(["-c", demo_run], proxy.url, str(tmp_path / "demo_app.log"), extra=["--refresh", "5", "--max-new-tokens", "500"])
    driver = chromium(tmp_path)
    try:
        driver.get(url)
        prompt = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        wait_for(driver, lambda d: "parameters" in d.find_element(By.CSS_SELECTOR, "#model-info").text)
        prompt.clear()
        prompt.send_keys("The quick brown fox")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait_for(driver, lambda d: "tokens/s" in d.find_element(By.CSS_SELECTOR, "#stats").text)  # streaming
        tokens = driver.find_element(By.CSS_SELECTOR, "#max-tokens input[type=number]").get_attribute("value")
        wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#stats").text.startswith(f"{tokens} tokens in"))
        text = driver.find_element(By.CSS_SELECTOR, "#output textarea").get_attribute("value")
        assert text.startswith("The quick brown fox") and len(text) > len("The quick brown fox")
        driver.save_screenshot(str(shots / "app_generate.png"))

        driver.get(url + "run")
        chart = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#chart img"))
        wait_for(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                    chart) > 500)
        wait_for(driver, lambda d: "train loss" in d.find_element(By.CSS_SELECTOR, "#run-status").text)
        if not demo_run:
            assert "9.712345" in driver.find_element(By.CSS_SELECTOR, "#run-status").text
            assert "Hello, I'm a language model, and" in driver.find_element(
                By.CSS_SELECTOR, "#samples textarea").get_attribute("value")
            first_chart = chart.get_attribute("src")
            with open(run_dir / "log.txt", "a") as f:  # training goes on: the timer redraws the chart
                f.write("3 train 9.500000\n")
            wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#chart img").get_attribute("src") != first_chart)
        driver.save_screenshot(str(shots / "app_run.png"))
    finally:
        driver.quit()
        if demo_run:
            stop_app(proc)
    assert (shots / "app_generate.png").stat().st_size > 10_000 and (shots / "app_run.png").stat().st_size > 10_000
    if os.environ.get("APP_SCREENSHOT_DIR"):
        from PIL import Image
        for name in ("app_generate.png", "app_run.png"):  # 256 colours: a third of the size, looks the same
            image = Image.open(shots / name).convert("RGB").quantize(256)
            image.save(os.path.join(os.environ["APP_SCREENSHOT_DIR"], name), optimize=True)


# -----------------------------------------------------------------------------
# start-up, safety, errors


def test_nothing_reached_for_the_network_and_refusals_are_one_line(app, proxy):
    """Runs after the tests above: through all of them, the proxy variable's address was never dialled."""
    assert proxy.connections == 0
    log = open(app["log"]).read()
    assert "Running on local URL:  http://127.0.0.1:" in log
    assert 'app.py", line' not in log  # Gradio logs its sliders' refusals with a traceback; app.py's are one line
    assert "app.py: refused: 'model_00020.pt' is not one of this app's checkpoints" in log
    assert "public link" not in log.replace("To create a public link, set `share=True`", "")


def test_bad_command_line_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "-c", str(tmp_path / "model_00001.pt")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: checkpoint {tmp_path / 'model_00001.pt'} does not exist: pass a checkpoint " \
                            f"file or a run directory such as log/\n"


def test_a_hub_model_that_cannot_be_downloaded_is_a_one_line_error(tmp_path):
    # as sample.py, hellaswag.py and heads.py say it: offline, -m NAME of a model not in the cache
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "-m", "someone/nothing"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("error: 'someone/nothing' is not in the local Hugging Face cache and the hub at "
                             "http://127.0.0.1:9 cannot be reached: pass a local directory with config.json and "
                             "model.safetensors (export_hf.py writes one)\n")  # at once: no half minute of retries


def test_a_run_directory_that_training_has_not_made_yet_is_watched(tmp_path):
    import app
    source = app.ModelSource(str(tmp_path / "log"), device="cpu")  # the app may start before train_gpt2.py
    assert source.run_dir == str(tmp_path / "log") and source.choices() == []
    assert app.Run(source.run_dir).status()["step"] is None
    os.makedirs(tmp_path / "log")
    write_checkpoint(tmp_path / "log" / "model_00150.pt", seed=0)
    assert source.choices() == ["model_00150.pt"]



# architectures away from GPT-2's: every one of these fields that GPTConfig has (the --arch fields arrive with
# issue 12; per-layer head counts are heads.py's pruned models)
ARCH = dict(norm="rmsnorm", norm_position="pre", pos_emb="rope", mlp="swiglu", bias=False, qk_norm=True,
            tie_head=False)
ARCH_FIELDS = {field.name for field in dataclasses.fields(GPTConfig)}


@pytest.mark.parametrize("overrides", [dict(layer_heads=[2, 1]),
                                       {k: v for k, v in ARCH.items() if k in ARCH_FIELDS}], ids=["pruned", "arch"])
def test_other_architectures_generate_what_sample_py_prints(tmp_path, capsys, overrides):
    """Any config a checkpoint holds goes through checkpoint.model_from_checkpoint and model.config, in the app as in sample.py."""
    import app
    from fineweb import get_tokenizer
    torch.manual_seed(0)
    config = GPTConfig(**TINY, **overrides)
    path = tmp_path / "model_00005.pt"
    torch.save({"model": GPT(config).state_dict(), "config": dataclasses.asdict(config), "step": 5}, path)
    source = app.ModelSource(str(tmp_path), device="cpu")
    model = source.get("model_00005.pt")
    described = app.describe(model, "model_00005.pt")
    assert all(f"{k}={v}" in described for k, v in overrides.items() if v != getattr(GPTConfig(), k))
    *_, (text, stats) = app.generate_stream(model, get_tokenizer(), "Once upon a time", 25, 0.9, 20, 1.0, 11, 2,
                                            "cpu", "fp32")
    sample.main(["-c", str(path), "--prompt", "Once upon a time", "--max-new-tokens", "25", "--temperature", "0.9",
                 "--top-k", "20", "--seed", "11", "--num-samples", "2", "--device", "cpu"])
    assert text + "\n" == capsys.readouterr().out and stats["tokens"] == 50


def test_bf16_generation_survives_each_step_on_another_thread(run_dir, capsys):
    """Gradio runs each step of a generator on whichever worker thread is free, and autocast is per thread. CUDA's
    default dtype is bf16: a step on a thread where the autocast of an earlier step was not entered used to mix an
    fp32 query with bf16 cached keys and fail. Here every step runs on a fresh thread, on CPU bf16 autocast, and
    the text is sample.py's (which holds one autocast for the whole generation); no thread is left in autocast."""
    import concurrent.futures
    import app
    from fineweb import get_tokenizer
    model = app.ModelSource(str(run_dir), device="cpu").get("model_00010.pt")
    steps = app.generate_stream(model, get_tokenizer(), "Once upon a time", 12, 0.9, 20, 1.0, 5, 1, "cpu", "bf16")
    left_in_autocast, text = [], None
    for _ in range(12):
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            text, _ = thread.submit(next, steps).result()
            left_in_autocast.append(thread.submit(torch.is_autocast_enabled, "cpu").result())
    sample.main(["-c", str(run_dir / "model_00010.pt"), "--prompt", "Once upon a time", "--max-new-tokens", "12",
                 "--temperature", "0.9", "--top-k", "20", "--seed", "5", "--num-samples", "1", "--device", "cpu",
                 "--dtype", "bf16"])
    assert text + "\n" == capsys.readouterr().out and not any(left_in_autocast)


def test_a_hugging_face_directory_loads_through_minus_m(tmp_path, run_dir):
    """-m names a hub model or a local HF directory (here export_hf.py's output): one choice, that name."""
    import app
    from export_hf import export
    export(str(run_dir / "model_00010.pt"), str(tmp_path / "hf"))
    source = app.ModelSource(model_name=str(tmp_path / "hf"), device="cpu")
    assert source.choices() == [str(tmp_path / "hf")]
    assert source.get(str(tmp_path / "hf")).config.n_layer == TINY["n_layer"]
    with pytest.raises(ValueError, match="is not one of this app's checkpoints"):
        source.get("gpt2")


@pytest.mark.parametrize("args, message", [
    (dict(max_new_tokens=0), f"max new tokens must be in 1..{CAP} (this app's --max-new-tokens), got 0"),
    (dict(temperature=3), "temperature must be in 0..2.0 (0 is greedy), got 3.0"),
    (dict(top_k=60000), "top-k must be in 0..50257 (0 turns it off), got 60000"),
    (dict(top_p=0), "top-p must be in (0, 1] (1 turns it off), got 0.0"),
    (dict(num_samples=9), "samples must be in 1..8, got 9"),
    (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
    (dict(top_p=float("nan")), "top-p must be finite, got nan"),
    (dict(seed=0.5), "seed must be a whole number, got 0.5"),
])
def test_the_app_checks_every_bound_itself(args, message):
    import app
    request = dict(prompt="hi", max_new_tokens=5, temperature=1.0, top_k=50, top_p=1.0, seed=-1, num_samples=1)
    with pytest.raises(ValueError) as error:
        app.check_request(**{**request, **args}, cap=CAP)
    assert str(error.value) == message


def test_a_busy_port_is_refused_in_our_words(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "-c", str(tmp_path), "--port",
                                 str(port)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: port {port} on 127.0.0.1 is in use or not available (Address already in use): " \
                            f"pass another --port, e.g. --port {port + 1}\n"
