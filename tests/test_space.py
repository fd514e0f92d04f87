"""
export_hf.py --space: the Space's folder, what the hub gets, and the Space itself run the way a Space runs it:
`python app.py` without arguments, in a fresh venv that holds only the Space's requirements.txt and the Gradio of
its sdk_version, its model downloaded from the stand-in hub (tests/hub_standin.py) at the pinned commit, checked
with gradio_client and headless Chromium against sample.py.
"""
import modulefinder
import os
import subprocess
import sys

import pytest
import torch
import yaml

from export_hf import GENERATE_SPEED, app_modules
from test_app import chromium, free_port, stop_app, wait_for, wait_until_serving
from test_export_hf import hub, hub_env, run_in, run_script, save_tiny_checkpoint  # noqa: F401 (hub: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLING = ["--num-samples", "1", "--seed", "3", "--max-new-tokens", "12", "--temperature", "0.9", "--top-k", "40"]


@pytest.fixture(scope="module")
def space(hub, tmp_path_factory):
    """export_hf.py CKPT out/ --push-to-hub someone/tiny --space someone/tiny-demo --space-dir space/, as a user
    runs it; then a second model is pushed to someone/tiny, so the Space's pin is what keeps it on the first."""
    root = tmp_path_factory.mktemp("space")
    first, second = str(root / "model_00123.pt"), str(root / "second" / "model_00200.pt")
    save_tiny_checkpoint(first, seed=0)
    os.makedirs(os.path.dirname(second))
    save_tiny_checkpoint(second, seed=1)
    env, space_dir = hub_env(hub.url, root / "hf_home"), str(root / "space")
    result = run_in(env, "export_hf.py", first, str(root / "out"), "--push-to-hub", "someone/tiny", "--space",
                    "someone/tiny-demo", "--space-dir", space_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    pinned = hub.repos["someone/tiny"]["sha"]
    assert result.stdout == (f"wrote {root / 'out'} from {first} (step 123)\n"
                             f"pushed {root / 'out'} to {hub.url}/someone/tiny (commit {pinned})\n"
                             f"wrote the Space's folder {space_dir}\n"
                             f"pushed the Space to {hub.url}/spaces/someone/tiny-demo: it builds and starts in a few "
                             f"minutes\n")
    again = run_in(env, "export_hf.py", second, str(root / "out"), "--force", "--push-to-hub", "someone/tiny")
    assert again.returncode == 0, again.stderr[-3000:]
    assert hub.repos["someone/tiny"]["sha"] != pinned
    return dict(dir=space_dir, first=first, second=second, pinned=pinned, root=root)


def read_folder(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}


def test_the_hub_gets_the_folder_with_its_front_matter_and_the_pin(space, hub):
    files = read_folder(space["dir"])
    assert hub.files("spaces/someone/tiny-demo") == files
    readme = files["README.md"].decode()
    front = yaml.safe_load(readme.split("---\n")[1])
    import gradio
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__ and front["app_file"] == "app.py"
    assert front["models"] == ["someone/tiny"] and front["license"] == "mit"
    assert front["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert 0 < len(front["short_description"]) <= 60  # the hub refuses a longer one
    assert f"at commit `{space['pinned']}`" in readme and GENERATE_SPEED in readme
    assert yaml.safe_load(files["space.json"]) == {"model": "someone/tiny", "revision": space["pinned"]}
    requirements = files["requirements.txt"].decode().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements  # a CPU Space: CPU torch
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert not [line for line in requirements if line.startswith("gradio")]  # the sdk_version installs Gradio


def test_the_space_carries_exactly_the_modules_app_py_imports(space):
    """Checked against the standard library's modulefinder, which follows every import in app.py's bytecode (in
    functions too) through the repository's files."""
    finder = modulefinder.ModuleFinder(path=[REPO])
    finder.run_script(os.path.join(REPO, "app.py"))
    imported = {os.path.basename(module.__file__)[:-3] for module in finder.modules.values()
                if module.__file__ and os.path.dirname(os.path.abspath(module.__file__)) == REPO}  # app.py too
    carried = {name[:-3] for name in os.listdir(space["dir"]) if name.endswith(".py")}
    assert carried == imported == set(app_modules())
    for name in carried:  # copies of the repository's files, unchanged
        assert open(os.path.join(space["dir"], name + ".py"), "rb").read() == \
            open(os.path.join(REPO, name + ".py"), "rb").read()


def start_space(python, space_dir, env, log_path):
    """`python app.py` in the Space's folder, as a Space starts it: no arguments, the address in GRADIO_SERVER_*."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("HF_TOKEN")  # the model repo is public: a Space needs no token to read it
    log = open(log_path, "w")
    proc = subprocess.Popen([python, "app.py"], cwd=space_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, log_path, "the Space", 240)
    return proc, url


@pytest.mark.slow
def test_the_space_runs_from_its_requirements_alone_and_serves_the_pinned_model(space, hub, tmp_path):
    """A fresh venv (no --system-site-packages) gets what the Space's builder installs: requirements.txt, then the
    Gradio of sdk_version. PIP_RETRIES=0: offline, PyTorch's CPU index fails at once and pip's own configuration
    finds the same wheels locally."""
    import gradio
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-r", "requirements.txt",
                              f"gradio=={gradio.__version__}"], cwd=space["dir"], capture_output=True, text=True,
                             env={**os.environ, "PIP_RETRIES": "0"}, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]

    env = hub_env(hub.url, space["root"] / "space_hf_home")  # an empty download cache: the Space downloads
    proc, url = start_space(python, space["dir"], env, str(tmp_path / "space.log"))
    try:
        import gradio_client
        client = gradio_client.Client(url, verbose=False, download_files=False)
        served = client.predict(None, "Hello, I'm a language model,", 12, 0.9, 40, 1.0, 3, 1, api_name="/generate")[0]
        first = run_script("sample.py", "-c", space["first"], *SAMPLING, "--device", "cpu")
        second = run_script("sample.py", "-c", space["second"], *SAMPLING, "--device", "cpu")
        assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
        assert served + "\n" == first.stdout != second.stdout  # the pinned commit's model, not the repo's newest

        driver = chromium(tmp_path)
        try:
            driver.get(url)
            card = wait_for(driver, lambda d: d.find_element("css selector", "#model-card"))
            assert " ".join(card.text.split()) == f"Model card: someone/tiny, at commit {space['pinned'][:12]}"
            link = card.find_element("css selector", "a")
            assert link.get_attribute("href") == f"{hub.url}/someone/tiny"
            wait_for(driver, lambda d: "parameters" in d.find_element("css selector", "#model-info").text)
            driver.find_element("css selector", "#generate").click()
            wait_for(driver, lambda d: d.find_element("css selector", "#stats").text.startswith("100 tokens in"))
            text = driver.find_element("css selector", "#output textarea").get_attribute("value")
            assert text.startswith("Hello, I'm a language model,") and len(text) > 40
        finally:
            driver.quit()
    finally:
        stop_app(proc)
    log = open(tmp_path / "space.log").read()
    assert f"someone/tiny@{space['pinned']} on cpu" in log


@pytest.mark.parametrize("flags, message", [
    (["--space", "someone/demo"], "error: --space and --space-dir go with --push-to-hub OWNER/NAME: the Space "
                                  "serves the model pushed there, at that commit"),
    (["--push-to-hub", "someone/x", "--space", "demo"], "error: --space takes OWNER/NAME (your user name or an "
                                                        "organization, then the repo's name), got 'demo'"),
])
def test_bad_space_flags_are_one_line_before_anything_is_written(hub, tmp_path, flags, message):
    save_tiny_checkpoint(str(tmp_path / "model.pt"))
    result = run_in(hub_env(hub.url, tmp_path / "home"), "export_hf.py", str(tmp_path / "model.pt"),
                    str(tmp_path / "out"), *flags)
    assert result.returncode == 2 and result.stderr == message + "\n" and result.stdout == ""
    assert not os.path.exists(tmp_path / "out") and "someone/x" not in hub.repos


def test_a_space_dir_that_is_not_empty_is_refused_before_the_push(hub, tmp_path):
    save_tiny_checkpoint(str(tmp_path / "model.pt"))
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "keep.txt").write_text("mine")
    result = run_in(hub_env(hub.url, tmp_path / "home"), "export_hf.py", str(tmp_path / "model.pt"),
                    str(tmp_path / "out"), "--push-to-hub", "someone/y", "--space-dir", str(tmp_path / "space"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {tmp_path / 'space'} exists and is not empty; pass --force to replace it\n"
    assert "someone/y" not in hub.repos and os.listdir(tmp_path / "space") == ["keep.txt"]


def test_a_space_of_someone_else_says_what_the_hub_holds(space, hub, tmp_path):
    result = run_in(hub_env(hub.url, tmp_path / "home"), "export_hf.py", space["first"], str(tmp_path / "out"),
                    "--push-to-hub", "someone/z", "--space", "other/demo")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: the token may not write to other/demo (403 Forbidden)")
    assert result.stderr.endswith(f"; nothing was changed on the hub (the model itself is pushed: "
                                  f"{hub.url}/someone/z)\n")
    assert hub.files("someone/z") and "spaces/other/demo" not in hub.repos


def test_bench_generate_smoke():
    """dev/bench_generate.py, the tokens/s a Space's README quotes: its smoke form runs and reports."""
    result = subprocess.run([sys.executable, "-m", "dev.bench_generate", "--smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny: ") and len(lines) == 3
    assert lines[1].startswith("1 sample(s) x 8 tokens: ") and lines[2].startswith("4 sample(s) x 8 tokens: ")


def test_readmes_push_and_space_command_runs_as_printed(hub, tmp_path):
    """README's line, with the test token's user for YOUR_NAME, in a directory whose log/ holds a checkpoint."""
    from test_readme import readme_lines
    line = next(words for words in readme_lines() if words[:2] == ["python", "export_hf.py"] and "--space" in words)
    line = [word.replace("YOUR_NAME", "someone") for word in line]
    os.makedirs(tmp_path / "log")
    save_tiny_checkpoint(str(tmp_path / "log" / "model_00123.pt"))
    result = subprocess.run([sys.executable, os.path.join(REPO, line[1]), *line[2:]], cwd=tmp_path, text=True,
                            capture_output=True, env=hub_env(hub.url, tmp_path / "home"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model, space_repo = line[line.index("--push-to-hub") + 1], line[line.index("--space") + 1]
    assert "config.json" in hub.files(model) and "space.json" in hub.files("spaces/" + space_repo)
