import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import asdict

import numpy as np
import pytest
import torch

import fineweb
import hellaswag
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# n_embd 32: with the real 50257-token vocabulary the lm_head is most of the cost, and it scales with n_embd
TINY = dict(block_size=64, n_layer=2, n_head=2, n_embd=32)


def example(ind, activity_label, ctx_a, ctx_b, endings, label, source="activitynet"):
    """One line of hellaswag_{split}.jsonl, with every field the real files have."""
    ctx = ctx_a + " " + ctx_b if ctx_b else ctx_a
    split_type = "indomain" if ind % 2 == 0 else "zeroshot"
    return dict(ind=ind, activity_label=activity_label, ctx_a=ctx_a, ctx_b=ctx_b, ctx=ctx, split="val",
                split_type=split_type, label=label, endings=endings, source_id=f"{source}~v_{ind:05d}")


# written for these tests (not copied from HellaSwag): ActivityNet-like and WikiHow-like lines, with the
# [title]/[step]/[header] tags the harness cleans up, a lowercase ctx_b, an empty ctx_b, and one example long
# enough to be truncated on the left by a block_size=64 model
FIXTURE = [
    example(0, "Washing dishes", "A man stands at a sink full of plates.", "he",
            ["scrubs a plate with a sponge and rinses it.", "throws the plates out of the window.",
             "starts to sing into a spoon.", "sits down and reads a newspaper."], 0),
    example(1, "Home and Garden", "[header] How to water a cactus [title] Check the soil first. [step] Push a "
            "finger into the soil.", "", ["[title] If it is dry, water it. [step] Pour slowly.",
                                           "Cactus are blue.", "[step] Paint the pot red and wait.",
                                           "Never touch soil."], 0, source="wikihow"),
    example(2, "Playing guitar", "A girl sits on a chair holding a guitar.", "she",
            ["strums a few chords and smiles.", "eats the guitar.", "puts it down and leaves the room quietly.",
             "tunes the strings one by one."], 3),
    example(3, "Running a marathon", "Runners line up behind the start line.", "the gun",
            ["fires and they begin to run.", "is made of cheese.", "sings.",
             "falls over and the race is cancelled."], 0),
    example(4, "Finance and Business", "[header] How to save money [title] Make a budget. [step] Write down what "
            "you earn and what you spend every month, including rent, food, travel, phone bills and the small "
            "things you buy without thinking, such as coffee on the way to work, snacks and magazines, because "
            "they add up over a year to a surprising amount of money that you could have kept.", "",
            ["[title] Cut what you do not need. [step] Cancel subscriptions you never use.",
             "[title] Buy a boat.", "Money grows on trees in the garden.",
             "[step] Spend everything on the first day of the month."], 0, source="wikihow"),
    example(5, "Walking the dog", "A woman holds a leash outside a house.", "the dog",
            ["pulls her down the street toward the park.", "opens the door with a key.",
             "reads the mail.", "drives away in a car."], 0),
    example(6, "Baking cookies", "A boy pours flour into a bowl.", "he",
            ["cracks two eggs and stirs.", "pours the bowl over his head.", "swims.",
             "paints the bowl green and puts it in the oven."], 1),
]


@pytest.fixture(scope="module")
def enc():
    return fineweb.get_tokenizer()


def tiny_model(seed=0, vocab_size=50257):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **TINY))
    # a sharper distribution than the N(0, 0.02) init, so the endings' scores are far apart and the
    # predictions depend on the scores rather than on rounding
    torch.nn.init.normal_(model.transformer.wte.weight, std=0.5)
    return model.eval()


def write_jsonl(path, examples):
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    return str(path)


# -----------------------------------------------------------------------------
# a brute-force reference, written independently of hellaswag.py: one row per forward, no padding, a
# log-softmax over the whole row and a Python loop over the scored tokens


def clean(text):  # the harness's preprocess, restated from its task definition
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def row_logprob(logits_fn, context, continuation, block_size):
    tokens = (context + continuation)[-(block_size + 1):]
    logprobs = torch.log_softmax(logits_fn(tokens[:-1]).float()[:, :50257], dim=-1)
    n_scored = min(len(continuation), len(tokens) - 1)
    total = 0.0
    for position in range(len(tokens) - n_scored, len(tokens)):
        total += logprobs[position - 1, tokens[position]].item()
    return total, n_scored


def brute_force(logits_fn, ex, enc, block_size):
    completion = [row_logprob(logits_fn, enc.encode(ex["ctx"]), enc.encode(" " + e), block_size)
                  for e in ex["endings"]]
    query = clean(ex["activity_label"] + ": " + ex["ctx_a"] + " " + ex["ctx_b"].capitalize())
    choices = [clean(e) for e in ex["endings"]]
    harness = [row_logprob(logits_fn, enc.encode(query), enc.encode(" " + c), block_size)[0] for c in choices]
    logprob = [lp for lp, _ in completion]
    return dict(
        logprob=logprob, harness_logprob=harness,
        pred=int(np.argmax(logprob)),
        pred_norm=int(np.argmin([-lp / n for lp, n in completion])),  # lowest mean loss per ending token
        harness_pred=int(np.argmax(harness)),
        harness_pred_norm=int(np.argmax([lp / len(c) for lp, c in zip(harness, choices)])),
    )


def our_logits(model):
    return lambda tokens: model(torch.tensor([tokens]))[0][0]


def accuracies(references, examples):
    n = len(examples)
    return dict(n=n, **{name: sum(r[key] == ex["label"] for r, ex in zip(references, examples)) / n
                        for name, key in [("acc", "pred"), ("acc_norm", "pred_norm"),
                                          ("harness_acc", "harness_pred"), ("harness_acc_norm", "harness_pred_norm")]})


@pytest.fixture(scope="module")
def reference(enc):
    model = tiny_model()
    with torch.no_grad():
        return [brute_force(our_logits(model), ex, enc, model.config.block_size) for ex in FIXTURE]


# -----------------------------------------------------------------------------
# rendering


def test_preprocess_follows_the_harness():
    assert hellaswag.preprocess("  Fix a bike [title] Take the wheel off. [step] Loosen the nut. ") == \
        "Fix a bike. Take the wheel off. Loosen the nut."
    assert hellaswag.preprocess("[header] How to cook rice") == " How to cook rice"
    assert hellaswag.preprocess("no tags here") == "no tags here"


def test_harness_query_capitalizes_ctx_b_and_prefixes_the_activity():
    ex = FIXTURE[0]
    assert hellaswag.harness_query(ex) == "Washing dishes: A man stands at a sink full of plates. He"
    assert hellaswag.harness_query(FIXTURE[1]) == \
        "Home and Garden: How to water a cactus. Check the soil first. Push a finger into the soil."


def test_render_example_is_context_then_each_ending_with_a_leading_space(enc):
    ex = FIXTURE[0]
    rows = hellaswag.render_example(ex, enc)
    assert len(rows) == 4
    for (context, ending_tokens), ending in zip(rows, ex["endings"]):
        assert context == enc.encode(ex["ctx"])
        assert ending_tokens == enc.encode(" " + ending)
        assert enc.decode(context + ending_tokens) == ex["ctx"] + " " + ending


def test_harness_rendering_equals_the_harness_encode_pair(enc):
    """lm-eval-harness encodes context + continuation whole and splits after the context's tokens, moving the
    context's trailing whitespace into the continuation; ours encodes separately, which must agree."""
    trailing = example(9, "Cars", "How to wash a car [title]", "", ["Rinse it.", "[step] Dry it.", "a", "b"], 0)
    assert hellaswag.harness_query(trailing) == "Cars: How to wash a car. "
    for ex in FIXTURE + [trailing]:
        query = hellaswag.harness_query(ex)
        for (context, continuation), choice in zip(hellaswag.render_harness_example(ex, enc), ex["endings"]):
            stripped = query.rstrip()
            whole = enc.encode(stripped + query[len(stripped):] + " " + clean(choice))
            assert context == enc.encode(stripped) and continuation == whole[len(context):]
    first_continuation = hellaswag.render_harness_example(trailing, enc)[0][1]
    assert enc.decode(first_continuation) == "  Rinse it."


def test_fit_row_truncates_on_the_left_and_scores_the_continuation():
    inputs, targets, n = hellaswag.fit_row([1, 2, 3], [4, 5], block_size=64)
    assert (inputs, targets, n) == ([1, 2, 3, 4], [2, 3, 4, 5], 2)
    inputs, targets, n = hellaswag.fit_row(list(range(100)), [500, 501], block_size=8)
    assert inputs == list(range(93, 100)) + [500] and targets[-2:] == [500, 501] and n == 2
    assert hellaswag.fit_row([], [7, 8], 8) == ([50256, 7], [7, 8], 2)  # empty context: condition on EOT


# -----------------------------------------------------------------------------
# scoring


def test_scores_equal_the_brute_force_reference_in_both_styles(reference):
    results = hellaswag.score_examples(tiny_model(), FIXTURE, "cpu", batch_size=3)
    for ours, ref in zip(results, reference):
        np.testing.assert_allclose(ours["logprob"], ref["logprob"], rtol=1e-5)
        np.testing.assert_allclose(ours["harness_logprob"], ref["harness_logprob"], rtol=1e-5)
        for key in ("pred", "pred_norm", "harness_pred", "harness_pred_norm"):
            assert ours[key] == ref[key], key
    # the two conventions really differ on this fixture (different contexts, different normalization)
    assert [r["logprob"] for r in results] != [r["harness_logprob"] for r in results]


def test_batched_equals_one_example_per_forward():
    model = tiny_model()
    one_by_one = [hellaswag.score_examples(model, [ex], "cpu")[0] for ex in FIXTURE]  # 8 rows per forward
    for batch_size in (3, 64):  # 24 rows per forward (the last batch shorter), then all 56 rows in one
        batched = hellaswag.score_examples(model, FIXTURE, "cpu", batch_size=batch_size)
        for a, b in zip(one_by_one, batched):
            assert [a[k] for k in ("pred", "pred_norm", "harness_pred", "harness_pred_norm")] == \
                [b[k] for k in ("pred", "pred_norm", "harness_pred", "harness_pred_norm")]
            np.testing.assert_allclose(a["logprob"] + a["harness_logprob"], b["logprob"] + b["harness_logprob"],
                                       rtol=1e-5)


def test_padded_vocab_model_scores_over_the_real_vocabulary(enc):
    model = tiny_model(seed=1, vocab_size=50304)
    with torch.no_grad():
        model.lm_head.weight[50257:] = 5.0  # loud padded rows: they must not leak into the log-softmax
        reference = [brute_force(our_logits(model), ex, enc, 64) for ex in FIXTURE[:3]]
    results = hellaswag.score_examples(model, FIXTURE[:3], "cpu", batch_size=2)
    for ours, ref in zip(results, reference):
        np.testing.assert_allclose(ours["logprob"], ref["logprob"], rtol=1e-5)


def test_evaluate_restores_the_train_mode_and_needs_no_grad():
    model = tiny_model().train()
    hellaswag.evaluate(model, FIXTURE[:2], "cpu")
    assert model.training
    hellaswag.evaluate(model.eval(), FIXTURE[:2], "cpu")
    assert not model.training


def test_ties_go_to_the_first_ending():
    assert hellaswag.argmax([-1.0, -0.5, -0.5, -2.0]) == 1
    assert hellaswag.argmax([0.0, 0.0]) == int(torch.tensor([0.0, 0.0]).argmax())


def test_two_ranks_together_equal_one_rank(reference):
    model = tiny_model()
    shards = [hellaswag.shard_examples(FIXTURE, rank, 2) for rank in range(2)]
    assert sorted(ex["ind"] for shard in shards for ex in shard) == [ex["ind"] for ex in FIXTURE]
    per_rank = [hellaswag.evaluate(model, FIXTURE, "cpu", batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert [r["n"] for r in per_rank] == [4, 3]
    whole = accuracies(reference, FIXTURE)
    for key in ("acc", "acc_norm", "harness_acc", "harness_acc_norm"):
        assert sum(round(r[key] * r["n"]) for r in per_rank) == round(whole[key] * whole["n"])


def test_unlabeled_examples_are_refused():
    unlabeled = [{k: v for k, v in ex.items() if k != "label"} for ex in FIXTURE[:2]]
    with pytest.raises(ValueError, match="unlabeled"):
        hellaswag.evaluate(tiny_model(), unlabeled, "cpu")


# -----------------------------------------------------------------------------
# data files, download and cache


def test_malformed_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(FIXTURE[0]).encode()
    for bad_line, reason in [(b"{not json", "Expecting property name"),
                             (json.dumps({**FIXTURE[1], "endings": "abc"}).encode(), "endings"),
                             (json.dumps({**FIXTURE[1], "label": 7}).encode(), "label"),
                             (json.dumps({"ctx": "only a ctx"}).encode(), "ctx_a"),
                             (b'{"ctx": "\xff"}', "utf-8")]:
        path.write_bytes(good + b"\n" + good + b"\n" + bad_line + b"\n")
        with pytest.raises(ValueError, match=f"bad.jsonl line 3 .*{reason}"):
            hellaswag.load_examples(data_file=str(path))


def test_data_file_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "fixture.jsonl", FIXTURE)
    assert hellaswag.load_examples(data_file=path) == FIXTURE
    assert [ex["ind"] for ex in hellaswag.load_examples(data_file=path, limit=3)] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hellaswag.load_examples(data_file=str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no examples"):
        hellaswag.load_examples(data_file=str(tmp_path / "empty.jsonl"))


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served, like raw.githubusercontent.com/.../data."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/data"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path):  # serve /data/X from the served folder
        return super().translate_path(path.replace("/data/", "/", 1))

    def log_message(self, *args):
        pass


def test_download_then_cache(server, tmp_path):
    served, url = server
    write_jsonl(served / "hellaswag_val.jsonl", FIXTURE)
    cache = tmp_path / "cache"
    assert hellaswag.load_examples("val", cache_dir=str(cache), base_url=url) == FIXTURE
    assert os.listdir(cache) == ["hellaswag_val.jsonl"]  # no temporary files left behind
    (served / "hellaswag_val.jsonl").unlink()  # a second load reads the cache, not the server
    assert hellaswag.load_examples("val", cache_dir=str(cache), base_url=url, limit=2) == FIXTURE[:2]


def test_failed_downloads_leave_no_file_in_the_cache(server, tmp_path, monkeypatch):
    served, url = server
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="could not download .*HTTPError"):
        hellaswag.load_examples("train", cache_dir=str(cache), base_url=url)  # 404
    (served / "hellaswag_test.jsonl").write_text(json.dumps(FIXTURE[0]) + "\n<html>oops</html>\n")
    with pytest.raises(ValueError, match="line 2"):
        hellaswag.load_examples("test", cache_dir=str(cache), base_url=url)
    # from the official address, a file with the wrong number of examples is refused (val has 10,042)
    write_jsonl(served / "hellaswag_val.jsonl", FIXTURE)
    monkeypatch.setattr(hellaswag, "OFFICIAL_URL", url)
    with pytest.raises(RuntimeError, match="gave 7 examples, not the 10042"):
        hellaswag.load_examples("val", cache_dir=str(cache), base_url=url)
    assert os.listdir(cache) == []


def test_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HELLASWAG_URL", "http://127.0.0.1:9/data")  # discard port: connection refused
    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path / "hs"))
    expected = re.escape(os.path.join(str(tmp_path / "hs"), "hellaswag_val.jsonl"))
    with pytest.raises(RuntimeError, match=f"offline, put hellaswag_val.jsonl at {expected}"):
        hellaswag.load_examples("val")
    assert os.listdir(tmp_path / "hs") == []


# -----------------------------------------------------------------------------
# the command line, run the way a user runs it


def run(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def write_checkpoint(path, model):
    torch.save({"model": model.state_dict(), "config": asdict(model.config), "step": 0}, path)
    return str(path)


def test_cli_checkpoint_prints_and_writes_the_results(tmp_path, reference):
    checkpoint = write_checkpoint(tmp_path / "model_00000.pt", tiny_model())
    data = write_jsonl(tmp_path / "fixture.jsonl", FIXTURE)
    out = tmp_path / "results.json"
    result = run("hellaswag.py", "-c", checkpoint, "--data-file", data, "--batch-size", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = accuracies(reference, FIXTURE)
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == (f"hellaswag n=7 acc={expected['acc']:.4f} acc_norm={expected['acc_norm']:.4f} "
                         f"harness_acc={expected['harness_acc']:.4f} "
                         f"harness_acc_norm={expected['harness_acc_norm']:.4f}")
    assert "completion style" in result.stdout and "harness style" in result.stdout
    saved = json.loads(out.read_text())
    assert {k: saved[k] for k in expected} == expected
    assert saved["model"] == checkpoint and saved["dtype"] == "fp32" and saved["batch_size"] == 3


def test_cli_hugging_face_directory_matches_transformers(tmp_path, enc, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    torch.nn.init.normal_(hf_model.transformer.wte.weight, std=0.5)
    hf_model.save_pretrained(tmp_path / "hf")
    with torch.no_grad():  # the reference runs transformers' own forward, not ours
        hf_logits = lambda tokens: hf_model.eval()(torch.tensor([tokens])).logits[0]  # noqa: E731
        reference = [brute_force(hf_logits, ex, enc, 64) for ex in FIXTURE[:4]]
    data = write_jsonl(tmp_path / "fixture.jsonl", FIXTURE[:4])
    hellaswag.main(["-m", str(tmp_path / "hf"), "--data-file", data, "--out", str(tmp_path / "r.json")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("hellaswag n=4 acc=")
    saved = json.loads((tmp_path / "r.json").read_text())
    expected = accuracies(reference, FIXTURE[:4])
    assert {k: saved[k] for k in expected} == expected
    assert saved["batch_size"] == 1  # the default off CUDA


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tiny_model(seed=2))
    data = write_jsonl(tmp_path / "fixture.jsonl", FIXTURE[:3])  # uneven: 2 forward passes on rank 0, 1 on rank 1
    args = ["hellaswag.py", "-c", checkpoint, "--data-file", data, "--batch-size", "1", "--device", "cpu"]
    ddp = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
              "--out", str(tmp_path / "ddp.json"))
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.count("hellaswag n=3 ") == 1  # only rank 0 reports
    expected = hellaswag.evaluate(tiny_model(seed=2), FIXTURE[:3], "cpu")
    saved = json.loads((tmp_path / "ddp.json").read_text())
    assert {k: saved[k] for k in expected} == expected and saved["world_size"] == 2


def test_cli_errors_are_one_line(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tiny_model())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FIXTURE[0]) + "\n{oops\n")
    result = run("hellaswag.py", "-c", checkpoint, "--data-file", str(bad))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "bad.jsonl line 2 is not a HellaSwag example" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_refuses_the_unlabeled_test_split(tmp_path):
    (tmp_path / "cache").mkdir()
    write_jsonl(tmp_path / "cache" / "hellaswag_test.jsonl",
                [{k: v for k, v in ex.items() if k != "label"} for ex in FIXTURE])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")  # refused before the model is even loaded
    with pytest.raises(ValueError, match="test split is unlabeled"):
        hellaswag.main(["-c", str(tmp_path / "junk.pt"), "--split", "test", "--cache-dir", str(tmp_path / "cache")])


def test_bad_arguments_fail_before_any_work(tmp_path):
    data = write_jsonl(tmp_path / "fixture.jsonl", FIXTURE)
    for args, message in [(["-c", str(tmp_path / "missing.pt")], "missing.pt does not exist"),
                          (["-c", "x.pt", "--limit", "0"], "--limit must be at least 1"),
                          (["-c", "x.pt", "--batch-size", "0"], "--batch-size must be at least 1")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            hellaswag.main([*args, "--data-file", data])
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):  # hardware.pick_dtype (tests/test_hardware.py)
        hellaswag.main(["-m", "gpt2", "--device", "cpu", "--dtype", "fp16", "--data-file", data])


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        hellaswag.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "None: 16 on CUDA, 1 elsewhere" in help_text and "(default: None)" in help_text
    assert "--split {train,val,test}" in help_text and "(default: val)" in help_text


def test_bench_smoke(capsys):
    from dev import bench_hellaswag
    bench_hellaswag.main(["--n-examples", "3", "--repeats", "1", "--batch-size", "2",
                          "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "64"])
    out = capsys.readouterr().out
    assert re.search(r"batched/one-per-forward: [\d.]+x", out) and "same predictions: yes" in out
