"""Token models (issue 10): token ids and text in, attributions per token out, from the command
line and from Python, on the sample text model and the corpus BERT encoder."""

import json
import sys

import numpy as np
import pytest

import igcli
from igcli.errors import ExitCode, InputError, UsageError
from tests.test_cli import ROOT, run

SENTIMENT = ROOT / "sample_models" / "sentiment.onnx"
SENTENCES = ROOT / "sample_inputs" / "sentences.txt"
HELDOUT = ROOT / "tests" / "data" / "sentiment_heldout.jsonl"
CORPUS = ROOT / "tests" / "corpus"
BERT = CORPUS / "models" / "hf_bert_legacy_op17.onnx"
BERT_DATA = CORPUS / "data"
WORD_EMBEDDINGS = "/word/Gather_output_0"  # the sample model's embedding lookup

# The decisive words of held-out sentences must get the largest attributions. Measured when
# this test was written: top-k hit rate 0.9975 (k = the number of decisive words), top-1
# 1.000 over 200 sentences, completeness error at most 5e-7 at the default 50 steps.
MIN_TOPK_HIT_RATE = 0.95


def test_decisive_words_get_the_largest_attributions():
    records = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    session = igcli.Session(SENTIMENT)
    samples = [session.load(r["text"], name=f"h{k}")[0] for k, r in enumerate(records)]
    explained = session.attribute_many(samples)
    hits, top1 = [], 0
    for r, (a,) in zip(records, explained, strict=True):
        assert a.target == r["label"], r["text"]  # the model gets every held-out sentence
        assert a.rel_error <= 0.01
        words = [t for t, _ in a.tokens]
        decisive = {p + 1 for p in r["positions"]}  # position 0 is [CLS]
        assert {words[p] for p in decisive} == set(r["decisive"])
        top = np.argsort(-a.positions, kind="stable")[: len(decisive)]
        hits.append(len(decisive & set(top.tolist())) / len(decisive))
        top1 += int(top[0] in decisive)
    rate = float(np.mean(hits))
    assert rate >= MIN_TOPK_HIT_RATE, f"top-k hit rate {rate:.3f}"
    assert top1 / len(records) >= MIN_TOPK_HIT_RATE


def test_sentences_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    result = run("explain", SENTIMENT, SENTENCES, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    texts = SENTENCES.read_text().splitlines()
    assert [r["text"] for r in records] == texts
    for r, text in zip(records, texts, strict=True):
        assert r["status"] == "ok" and r["gradient_source"] == "graph"
        assert r["at"] == WORD_EMBEDDINGS and r["baseline"] == "pad"
        assert r["rel_error"] <= 0.01
        tokens = [t for t, _ in r["tokens"]]
        assert tokens[: len(text.split()) + 2] == ["[CLS]", *text.split(), "[SEP]"]
        values = np.array([v for _, v in r["tokens"]])
        assert values.sum() == pytest.approx(r["attribution_sum"], rel=1e-9, abs=1e-12)
        assert values[0] == 0 and values[len(text.split()) + 1] == 0  # [CLS] and [SEP] kept
        attr = np.load(out / r["attributions_file"])
        assert attr.shape == (1, 16, 16) and attr.dtype == np.float32
        assert (out / r["heatmap_file"]).read_bytes().startswith(b"\x89PNG")
    assert records[0]["label"] == "positive" and records[1]["label"] == "negative"
    assert (out / "report.html").is_file()


def test_cli_and_library_write_identical_npy_for_tokens(tmp_path):
    ids = tmp_path / "ids.npy"
    session = igcli.Session(SENTIMENT)
    np.save(ids, session.load("the acting was dreadful")[0].x[None])
    cli = tmp_path / "cli"
    for source in (SENTENCES, ids):
        result = run("explain", SENTIMENT, source, "--out", cli, "--steps", "24")
        assert result.exit_code == 0, result.stderr
    lib = tmp_path / "lib"
    for a in [
        r[0]
        for r in session.attribute_many(
            session.load(SENTENCES), None, igcli.AttributionSettings(steps=24)
        )
    ]:
        a.save(lib)
    session.attribute(ids, steps=24).save(lib)
    names = [f"sentences_row{k}.npy" for k in range(5)] + ["ids.npy"]
    for name in names:
        assert (cli / name).read_bytes() == (lib / name).read_bytes(), name


def test_text_strings_arrays_and_notebook_views():
    session = igcli.Session(SENTIMENT)
    a = session.attribute("What a DELIGHTFUL film!")
    assert a.label == "positive" and a.rel_error < 0.01
    tokens = [t for t, _ in a.tokens]
    # lower-cased; "what" and "!" are not in the sample vocabulary
    assert tokens[:8] == ["[CLS]", "[UNK]", "a", "delightful", "film", "[UNK]", "[SEP]", "[PAD]"]
    by_token = dict(a.tokens[:7])
    assert max(by_token, key=by_token.get) == "delightful"
    from_ids = session.attribute(a.sample.x)  # an array of ids gives the same
    np.testing.assert_allclose(from_ids.attributions, a.attributions, rtol=1e-6, atol=1e-9)
    html = a._repr_html_()
    assert html.count("<span") == 7 and "delightful" in html and "[PAD]" not in html
    assert a._repr_png_().startswith(b"\x89PNG")
    from rich.console import Console

    console = Console(record=True, width=200, color_system="truecolor", force_terminal=True)
    console.print(a)
    assert "delightful" in console.export_text()
    assert "background-color: #" in console.export_html(inline_styles=True)


def test_baselines_in_token_space():
    session = igcli.Session(SENTIMENT)
    vocab = session.tokens.vocab
    sample = session.load("the plot was superb")[0]
    pad = session.attribute(sample, baseline="pad")
    ids = sample.x
    kept = np.isin(ids, [vocab.id_of("[CLS]"), vocab.id_of("[SEP]"), vocab.pad_id])
    assert pad.extra["gradient_check"]["verdict"] in ("ok", "saturated")
    mask = session.attribute(sample, baseline="mask")
    zero = session.attribute(sample, baseline="zero")
    for a in (pad, mask, zero):
        assert a.rel_error < 0.01
    # the sample model's [PAD] embedding is zero: pad and zero differ only at [CLS]/[SEP]
    values = pad.positions
    assert np.all(values[kept] == 0) and np.all(values[~kept] != 0)
    assert not np.allclose(mask.attributions, pad.attributions)
    assert np.count_nonzero(zero.positions) == np.count_nonzero(ids != vocab.pad_id)


def test_token_model_input_errors(tmp_path):
    out = tmp_path / "o"
    np.save(tmp_path / "far.npy", np.array([[2, 500, 3] + [0] * 13]))
    np.save(tmp_path / "frac.npy", np.full((1, 16), 2.5))
    np.save(tmp_path / "short.npy", np.array([2, 7, 3]))
    for name, what in (("far.npy", "outside the vocabulary"), ("frac.npy", "whole numbers"),
                       ("short.npy", "the model takes 16")):  # fmt: skip
        result = run("explain", SENTIMENT, tmp_path / name, "--out", out)
        assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
        assert what in result.stderr and "Traceback" not in result.stderr
    png = ROOT / "sample_inputs" / "digits" / "digit_0_idx1.png"
    result = run("explain", SENTIMENT, png, "--out", out)
    assert result.exit_code == ExitCode.INPUTS_FAILED and "token model" in result.stderr
    (tmp_path / "long.txt").write_text("the " * 30 + "\n")
    result = run("explain", SENTIMENT, tmp_path / "long.txt", "--out", out)
    assert result.exit_code == ExitCode.INPUTS_FAILED and "limit of 16" in result.stderr
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n')
    result = run("explain", SENTIMENT, tmp_path / "bad.jsonl", "--out", out)
    assert result.exit_code == ExitCode.INPUTS_FAILED and "line 2" in result.stderr
    # 1,000 '[' in 2 KB: the JSON decoder's recursion ran out, an internal error stopped it all
    deep = "[" * 1000 + "]" * 1000
    (tmp_path / "deep.jsonl").write_text(f'"fine"\n{deep}\n"good film"\n')
    result = run("explain", SENTIMENT, tmp_path / "deep.jsonl", "--out", out)
    assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
    assert "line 2 is not JSON (nested too deeply)" in result.stderr
    assert "2 explained, 1 failed" in result.stderr + result.stdout
    (out / "deep_row0.record.json").write_text(deep)  # a record cut, or someone's file
    result = run("explain", SENTIMENT, tmp_path / "deep.jsonl", "--out", out, "--skip-existing")
    assert result.exit_code == ExitCode.INPUTS_FAILED and "internal" not in result.stderr
    result = run("explain", SENTIMENT, SENTENCES, "--baseline", "black", "--out", out)
    assert result.exit_code == ExitCode.USAGE and "black" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_baseline_ids_outside_the_vocabulary_are_a_usage_error(tmp_path):
    """A baseline id of -5 was wrapped by the model's Gather to id 62 (a silently different
    baseline); 10**7 gave ONNX Runtime's message, blamed on every input in turn."""
    out = tmp_path / "o"
    for value in (-5, 10**7):
        path = tmp_path / f"b{value}.npy"
        np.save(path, np.full(16, value, np.int64))
        result = run("explain", SENTIMENT, SENTENCES, "--baseline", path, "--out", out)
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert result.stderr.strip() == (
            f"error: {path}: token id {value} is outside the vocabulary (0 to 66)"
        )
    session = igcli.Session(SENTIMENT)
    sample = session.load("the plot was superb")[0]
    with pytest.raises(UsageError, match="token id -5 is outside the vocabulary"):
        session.attribute(sample, baseline=np.full(16, -5))
    with pytest.raises(UsageError, match="outside the vocabulary"):
        session.attribute(sample, baseline=np.full(16, 2**63 + 5, np.uint64))


def test_token_ids_too_large_for_int64_are_refused_in_one_line(tmp_path):
    """A float id of 1e20 was cast to int64 as -2**63, numpy's two-line RuntimeWarning on
    stderr, and named as 'token id -9223372036854775808'."""
    import warnings

    ids = np.zeros(16, np.float32)
    ids[:3] = [2, 1e20, 3]
    np.save(tmp_path / "f.npy", ids)
    np.save(tmp_path / "u.npy", np.array([2, 2**64 - 1] + [0] * 14, np.uint64))
    for name, shown in (("f.npy", "1e+20"), ("u.npy", "1.84467e+19")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run("explain", SENTIMENT, tmp_path / name, "--out", tmp_path / "o")
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert result.exit_code == ExitCode.INPUTS_FAILED, result.stderr
        first = result.stderr.strip().splitlines()[0]
        assert first == f"error: {tmp_path / name}: token id {shown} is too large to be an id"


def test_an_fd_step_below_the_input_precision_is_refused_not_blamed_on_the_model(tmp_path):
    """--fd-step 1e-30: every difference came out 0 and the run said the model 'looks
    piecewise constant', exit 0 with a 100% completeness miss."""
    digits = ROOT / "sample_models" / "digits_cnn.onnx"
    png = ROOT / "sample_inputs" / "digits" / "digit_0_idx1.png"
    out = tmp_path / "o"
    result = run("explain", digits, png, "--gradients", "fd", "--fd-step", "1e-30", "--out", out)
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert result.stderr.strip() == (
        "error: fd_step (--fd-step) 1e-30 is below the input's float32 precision (1.19e-07): "
        "a step that small moves no value; give at least 1.19e-07 (default 0.001)"
    )
    assert not out.exists()
    with pytest.raises(UsageError, match="below the input's float32 precision"):
        igcli.Session(SENTIMENT, fd_step=1e-9)  # token ids: their float32 embedding
    assert igcli.Session(digits, fd_step=2e-7).fd_step == 2e-7


def test_jsonl_texts(tmp_path):
    lines = [{"text": "an awful ending"}, "superb music", {"text": "a charming cast", "x": 1}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    result = run("explain", SENTIMENT, tmp_path / "t.jsonl", "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == ["negative", "positive", "positive"]


def test_text_needs_a_tokenizer_and_the_tokenizers_package(tmp_path, monkeypatch):
    bare = tmp_path / "m.onnx"
    bare.write_bytes(SENTIMENT.read_bytes())
    warnings = []
    session = igcli.Session(bare, warn=warnings.append)
    assert any("no tokenizer.json" in w for w in warnings)
    with pytest.raises(UsageError, match="tokenizer"):
        session.attribute("superb music")
    ids = igcli.Session(SENTIMENT).load("superb music")[0].x
    assert session.attribute(ids).tokens[1][0] == f"#{ids[1]}"  # ids still work, shown as ids
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(UsageError, match=r"igcli\[text\]"):
        igcli.Session(SENTIMENT).attribute("superb music")
    given = igcli.Session(bare, tokenizer=SENTIMENT.with_suffix(".tokenizer.json"))
    assert given.tokens.vocab.pad_id == 0


def test_a_tokenizer_given_for_an_image_model_is_refused(tmp_path):
    """--tokenizer with an image model was ignored: the run went ahead as if it applied."""
    tokenizer = SENTIMENT.with_suffix(".tokenizer.json")
    digits = ROOT / "sample_models" / "digits_cnn.onnx"
    image = next((ROOT / "sample_inputs" / "digits").glob("*.png"))
    result = run("explain", digits, image, "--tokenizer", tokenizer, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.USAGE
    assert "--tokenizer is for token models" in result.stderr and "float32" in result.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="token models"):
        igcli.Session(digits, tokenizer=tokenizer)


def test_bert_from_python_derives_mask_and_types():
    """The corpus BERT with no --feed: mask and token types derived from the ids and the
    tokenizer beside it give what the explicit feeds give (the Captum reference's)."""
    ids = BERT_DATA / "hf_bert.input_ids.npy"
    derived = igcli.Session(BERT).attribute(ids, target=1, steps=32)
    feeds = {k: BERT_DATA / f"hf_bert.{k}.npy" for k in ("attention_mask", "token_type_ids")}
    fed = igcli.Session(BERT, feeds=feeds).attribute(ids, target=1, steps=32)
    np.testing.assert_allclose(derived.attributions, fed.attributions, rtol=1e-5, atol=1e-12)
    assert derived.rel_error <= 0.01 and derived.baseline_name == "pad"
    ref = np.load(BERT_DATA / "hf_bert.lig_word_embeddings.ref.npy")[0]
    assert _pearson(derived.attributions, ref) >= 0.999
    assert [t for t, _ in derived.tokens][:2] == ["[CLS]", "tok182"]
    assert derived.f_input == pytest.approx(0.110464, abs=2e-6)


def test_bert_at_defaults_from_the_command_line(tmp_path):
    """No --feed, --at, --baseline, --steps or --target: the top class at 50 steps, the pad
    baseline, at the word embeddings."""
    ids = BERT_DATA / "hf_bert.input_ids.npy"
    result = run("explain", BERT, ids, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["at"] == "/inner/bert/embeddings/word_embeddings/Gather_output_0"
    assert record["baseline"] == "pad" and record["steps"] == 50
    assert record["rel_error"] <= 0.01 and record["gradient_source"] == "graph"
    a = igcli.Session(BERT).attribute(ids)
    assert a.target == record["target"] and a.rel_error <= 0.01


def test_bert_at_the_embeddings_block_matches_captum(tmp_path):
    manifest = json.loads((CORPUS / "corpus.json").read_text())
    entry = next(e for e in manifest["models"] if e["name"] == "hf_bert_legacy_op17")
    block = entry["issue10"]["block_tensor"]
    ref = np.load(CORPUS / entry["issue10"]["references"]["embeddings"]["file"])
    session = igcli.Session(BERT)
    a = session.attribute(BERT_DATA / "hf_bert.input_ids.npy", target=1, steps=32, at=block)
    assert a.at == block and session.cut(block) is session.cut(block)  # one session per cut
    assert _pearson(a.attributions, ref[0]) >= 0.999
    assert a.rel_error <= 0.01
    out = tmp_path / "out"
    result = run(
        "explain", BERT, BERT_DATA / "hf_bert.input_ids.npy", "--at", block, "--target", "1",
        "--steps", "32", "--json", "--no-heatmaps", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["at"] == block and record["rel_error"] <= 0.01
    assert _pearson(np.load(out / record["attributions_file"]), ref) >= 0.999


def test_inspect_names_the_embedding_lookup():
    result = run("inspect", BERT, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    gather = "/inner/bert/embeddings/word_embeddings/Gather_output_0"
    assert info["attribute_at"] == gather and info["gradient_graph"]
    first = info["cut_candidates"][0]
    assert first == {"name": gather, "shape": ["batch", "sequence", 32], "embedding": True}
    names = [c["name"] for c in info["cut_candidates"]]
    assert not any("position_embeddings" in n for n in names)  # depends on the ids' shape only
    text = run("inspect", SENTIMENT)
    assert "attributed at: /word/Gather_output_0" in text.stdout


def test_aggregate_l2_and_none(tmp_path):
    session = igcli.Session(SENTIMENT, aggregate="l2")
    a = session.attribute("a dull film")
    full = a.attributions
    np.testing.assert_allclose(a.positions, np.sqrt((full**2).sum(axis=1)))
    none = igcli.Session(SENTIMENT, aggregate="none").attribute("a dull film")
    assert none.tokens is None and none.positions.shape == (16, 16)
    record = none.save(tmp_path)
    assert "tokens" not in record and record["aggregate"] == "none"
    with pytest.raises(UsageError, match="aggregate"):
        igcli.Session(SENTIMENT, aggregate="mean")


def test_text_file_rows_are_read_one_per_line(tmp_path):
    (tmp_path / "s.txt").write_text("superb\n\n  \nan awful plot\n")
    samples = igcli.Session(SENTIMENT).load(tmp_path / "s.txt")
    assert [s.name for s in samples] == ["s_row0", "s_row1"]
    assert [s.text for s in samples] == ["superb", "an awful plot"]
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no text"):
        igcli.Session(SENTIMENT).load(tmp_path / "e.txt")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_samples_sharing_calls_keep_their_own_masks():
    """Path points of texts of different lengths share model calls; each row must carry its
    own sample's attention mask (a mix-up changes the numbers)."""
    session = igcli.Session(SENTIMENT, batch_size=40)  # calls straddle samples
    texts = ["superb", "a dull film with a tedious ending and boring music", "an awful plot"]
    samples = [session.load(t, name=f"s{k}")[0] for k, t in enumerate(texts)]
    together = [r[0] for r in session.attribute_many(samples)]
    for sample, joint in zip(samples, together, strict=True):
        alone = igcli.Session(SENTIMENT).attribute(sample)
        np.testing.assert_allclose(joint.attributions, alone.attributions, rtol=1e-5, atol=1e-8)
        assert joint.f_baseline == pytest.approx(alone.f_baseline, rel=1e-6)


@pytest.mark.parametrize(
    ("suffix", "lines", "bad"),
    [
        (".txt", ["the plot was superb", " ".join(["superb"] * 40), "awful film"], "line 2"),
        (".jsonl", ['{"text": "great"}', '{"text": null}', "not json", '"fine movie"'], "line 2"),
        (".jsonl", ['"great"', '""', '{"text": " "}', '"fine"'], "line 2: the text is empty"),
        # a "\ud800" escape is a lone surrogate, which the tokenizer took for a TypeError:
        # the whole run stopped with an internal error (exit 1), nothing written
        (".jsonl", ['{"text": "great"}', '{"text": "lone \\ud800 one"}', '"fine"'], "surrogate"),
    ],
)
def test_a_bad_line_of_a_text_file_fails_alone(tmp_path, suffix, lines, bad):
    """A line too long for the tokenizer, or a JSON line without text, failed the whole
    file, unnamed; now each line is an input of its own, as CSV rows are."""
    path = tmp_path / f"t{suffix}"
    path.write_text("\n".join(lines) + "\n")
    result = run("explain", SENTIMENT, path, "--out", tmp_path / "o", "--json", "-q")
    assert result.exit_code == ExitCode.INPUTS_FAILED
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["name"] for r in records] == [f"t_row{k}" for k in range(len(lines))]
    assert records[0]["status"] == "ok" and records[-1]["status"] == "ok"
    assert records[1]["status"] == "error" and bad in records[1]["error"]


def test_a_tensor_after_pooling_is_not_drawn_as_tokens(tmp_path):
    """The head's 16 hidden units numbered as many as the tokens and were printed as the
    tokens; a tensor of another width crashed (exit 1). Entries without a token axis are
    the tensor's own."""
    text = tmp_path / "t.txt"
    text.write_text("the plot was superb\n")
    out = tmp_path / "o"
    at = "/head/head.1/Tanh_output_0"
    result = run("explain", SENTIMENT, text, "--at", at, "--out", out, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert "tokens" not in record and (out / "t_row0.png").is_file()
    for how in ("none", "l2"):
        again = run("explain", SENTIMENT, text, "--at", at, "--aggregate", how, "--out", out)
        assert again.exit_code == 0, again.stderr


def test_l2_per_token_is_drawn_as_a_magnitude():
    """--aggregate l2 gives |attribution| per token: drawn on the magnitude scale, never as
    'raises the score' (a token that lowers it showed red)."""
    from igcli.visualize import magnitude_map

    for how, expected in (("l2", True), ("sum", False)):
        session = igcli.Session(SENTIMENT, aggregate=how, cache=False)
        a = session.attribute("a dull film", steps=8)
        assert magnitude_map(a) is expected
        a.image()  # draws


def test_lines_end_at_newlines_and_lone_carriage_returns_only(tmp_path):
    """U+2028, U+0085 and a form feed may stand inside a sentence, and raw inside a JSON
    string: str.splitlines broke there, shifting every later row (and failing valid JSON
    Lines as 'not JSON')."""
    from igcli.tokens import read_texts

    (tmp_path / "t.txt").write_text("one\u2028still one\nform\ffeed\r\nthree\n", "utf-8")
    texts = read_texts(tmp_path / "t.txt")
    assert [n for n, _ in texts] == [1, 2, 3] and texts[0][1] == "one\u2028still one"
    (tmp_path / "t.jsonl").write_text('{"text": "a\u2028b"}\n{"text": "c\u0085d"}\n', "utf-8")
    assert read_texts(tmp_path / "t.jsonl") == [(1, "a\u2028b"), (2, "c\u0085d")]
    (tmp_path / "mac.txt").write_bytes(b"the plot\ra dull film\r")  # CR alone: two texts
    assert read_texts(tmp_path / "mac.txt") == [(1, "the plot"), (2, "a dull film")]


def test_a_text_far_too_long_is_refused_before_tokenizing(tmp_path):
    """A line of 11 MB took 1.3 GB in the tokenizer before it was refused for its length;
    now it fails alone at once, and the file's other lines are explained."""
    from tests.test_cli import run

    (tmp_path / "t.txt").write_text("good movie " * 1_000_000 + "\nfine film\n")
    result = run("explain", SENTIMENT, tmp_path / "t.txt", "--steps", "4", "--json",
                 "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 4
    assert "characters, more than this model can take" in result.stderr
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["error", "ok"]


def _unflagged_tokenizer(tmp_path, post_processor, renamed=None):
    """The sample model's tokenizer.json with no added_tokens (so nothing flagged special)
    and another post_processor; `renamed` renames vocabulary entries ([CLS] -> <s>)."""
    data = json.loads(SENTIMENT.with_suffix(".tokenizer.json").read_text())
    data["added_tokens"], data["padding"] = [], None
    for old, new in (renamed or {}).items():
        data["model"]["vocab"][new] = data["model"]["vocab"].pop(old)
    data["post_processor"] = post_processor
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [
        {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
    ],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {
        "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
        "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
    },
}
_BERT = {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
               "use_regex": True}  # fmt: skip


@pytest.mark.parametrize(
    "post_processor",
    [
        _TEMPLATE,
        _BERT,
        {"type": "Sequence", "processors": [_BYTE_LEVEL, _BERT]},
        {"type": "Sequence", "processors": [{"type": "Sequence", "processors": [_TEMPLATE]}]},
    ],
    ids=["template", "bert", "sequence", "nested-sequence"],
)
def test_tokens_the_post_processor_inserts_are_kept_by_the_pad_baseline(tmp_path, post_processor):
    """[CLS] and [SEP] in the vocabulary, put in by the post_processor but not flagged special
    in added_tokens, were taken for words: the pad baseline replaced them by [PAD], F(baseline)
    was another (a DistilBERT's 0.309 for 3.237) and [CLS] took almost all the attribution."""
    from igcli.tokens import Vocabulary, token_baseline

    path = _unflagged_tokenizer(tmp_path, post_processor)
    vocab = Vocabulary.load(path)
    assert vocab.keep_ids == {2, 3} and vocab.pad_id == 0
    session = igcli.Session(SENTIMENT, tokenizer=path, cache=False)
    sample = session.load("the plot was superb")[0]
    assert [t for t, _ in session.attribute(sample, steps=8).tokens][:6] == [
        "[CLS]", "the", "plot", "was", "superb", "[SEP]",
    ]  # fmt: skip
    baseline = token_baseline("pad", sample, session.tokens.vocab)
    assert baseline[:6].tolist() == [2, 0, 0, 0, 0, 3] and np.all(baseline[6:] == 0)
    a = session.attribute(sample, steps=8)
    flagged = igcli.Session(SENTIMENT, cache=False).attribute("the plot was superb", steps=8)
    assert a.f_baseline == pytest.approx(flagged.f_baseline, rel=1e-6)
    assert a.positions[0] == 0 and a.positions[5] == 0  # [CLS] and [SEP] kept


def test_roberta_processing_names_its_specials_by_id_and_token(tmp_path):
    """RobertaProcessing's <s> and </s>: kept from the [token, id] pairs alone."""
    from igcli.tokens import Vocabulary

    processor = {"type": "RobertaProcessing", "sep": ["</s>", 3], "cls": ["<s>", 2],
                 "trim_offsets": True, "add_prefix_space": False}  # fmt: skip
    renamed = {"[CLS]": "<s>", "[SEP]": "</s>", "[PAD]": "<pad>"}
    vocab = Vocabulary.load(_unflagged_tokenizer(tmp_path, processor, renamed))
    assert vocab.keep_ids == {2, 3} and vocab.pad_id == 0 and vocab.token(2) == "<s>"


def test_post_processor_ids_outside_the_vocabulary_are_ignored(tmp_path):
    """A post_processor may name an id the vocabulary lacks, or be malformed: such a part
    adds nothing (no crash, no id the model cannot take); the rest still counts."""
    from igcli.tokens import Vocabulary

    template = json.loads(json.dumps(_TEMPLATE))
    template["special_tokens"]["[CLS]"]["ids"] = [500]  # outside the vocabulary (67)
    template["special_tokens"]["[X]"] = "not an entry"
    template["single"].append({"SpecialToken": ["not", "a", "piece"]})
    processors = [
        template,
        {"type": "BertProcessing", "cls": ["[CLS]", 10**9], "sep": "[SEP]"},
        {"type": "Sequence", "processors": "none"},
        {"type": "TemplateProcessing", "special_tokens": [], "single": "[CLS] $A [SEP]"},
        None,
    ]
    path = _unflagged_tokenizer(tmp_path, {"type": "Sequence", "processors": processors})
    assert Vocabulary.load(path).keep_ids == {3}  # [SEP] only: [CLS]'s ids are not in it
    nothing = _unflagged_tokenizer(tmp_path, {"type": "BertProcessing", "cls": ["[CLS]", -1]})
    assert Vocabulary.load(nothing).keep_ids == set()


def _one_sample_token_model(path, mask_first="1"):
    """Token ids and an attention mask, both [1, seq]: an export of one sample whose sequence
    axis alone is open (torch's dynamo exporter fixes the batch at 1 so, or dynamic_axes={1:
    'seq'})."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    dim = int(mask_first) if mask_first.isdigit() else mask_first
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["emb"]),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
            helper.make_node("Mul", ["emb", "m3"], ["h"]),
            helper.make_node("ReduceSum", ["h", "one"], ["pooled"], keepdims=0),
            helper.make_node("Tanh", ["pooled"], ["t"]),
            helper.make_node("MatMul", ["t", "W"], ["logits"]),
        ],
        "one_sample",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [dim, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(rng.normal(size=(20, 4)).astype(np.float32), "E"),
         numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "one")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("mask_first", ["1", "batch"])
def test_a_mask_beside_ids_of_a_batch_fixed_at_1_carries_that_batch(tmp_path, mask_first):
    """With ids [1, seq] the mask's open axis is its sequence, not its batch: the derived mask
    was built along the wrong axis (ONNX Runtime: 'index: 0 Got: 12 Expected: 1') and a fed
    [1, 12] mask 'held a batch of 12'."""
    from igcli.model import TensorSpec, feed_batch_axis

    ids_spec = TensorSpec("ids", [1, "seq"], np.dtype(np.int64))
    dim = 1 if mask_first == "1" else mask_first
    assert feed_batch_axis(TensorSpec("mask", [dim, "seq"], np.dtype(np.int64)), ids_spec) == 0
    assert feed_batch_axis(TensorSpec("pos", ["seq"], np.dtype(np.int64)), ids_spec) is None
    model = _one_sample_token_model(tmp_path / "m.onnx", mask_first)
    ids = np.array([[3, 7, 1, 9, 4, 0]], np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    fed = igcli.Session(model, feeds={"attention_mask": mask}).attribute(ids, steps=16)
    assert fed.rel_error < 1e-3 and fed.attributions.shape == (6, 4)
    assert np.all(fed.attributions[5] == 0) and np.all(fed.attributions[:5] != 0)
    derived = igcli.Session(model).attribute(ids, steps=16)  # (no tokenizer: a mask of ones)
    ones = igcli.Session(model, feeds={"attention_mask": np.ones_like(ids)})
    want = ones.attribute(ids, steps=16).attributions
    np.testing.assert_allclose(derived.attributions, want, rtol=1e-5, atol=1e-9)
    result = run("explain", str(model), str(tmp_path / "ids.npy"), "--feed",
                 f"attention_mask={tmp_path / 'mask.npy'}", "--steps", "16", "--out",
                 str(tmp_path / "out"))  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run("gradcheck", str(model), str(tmp_path / "ids.npy"), "--feed",
                 f"attention_mask={tmp_path / 'mask.npy'}")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_the_token_line_leaves_out_padding_not_a_last_token_with_nothing_on_it():
    """A text filling every position ends in RoBERTa's </s>, which the pad baseline keeps,
    so its attribution is exactly 0: the terminal line dropped it as if it were padding."""
    import io

    from igcli.console import Messages

    def line(record):
        out = io.StringIO()
        Messages(stream=out).print_tokens([{"name": "r", **record}])
        return out.getvalue().strip()

    full = [["<s>", 0.0], ["w1", 0.3], ["w2", -0.1], ["</s>", 0.0]]
    assert line({"tokens": full}) == "r: <s> w1 w2 </s>"
    padded = [*full, ["<pad>", 0.0], ["<pad>", 0.0]]
    assert line({"tokens": padded}) == "r: <s> w1 w2 </s>"
    masked = [*full[:3], ["</s>", 0.0], ["x", 0.0]]  # the mask says 4 real tokens
    assert line({"tokens": masked, "tokens_shown": 4}) == "r: <s> w1 w2 </s>"
