"""The C4 stage: each of C4's heuristics (TFDS ``c4_utils.clean_page``) on hand-made pages."""

import importlib.util
import os
import pickle

import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError
from llama_jax.prepare import c4, stage

GOOD = [
    "The quick brown fox jumps over the lazy dog.",
    "A second sentence follows here. And a third one too!",
    "Does this line have enough words?",
    'He said "this line ends in a quote."',
]


def _env():
    return stage.StageEnv(name="c4_quality", work_dir="/tmp/unused", tasks=1)


def _run(docs, **overrides):
    cfg = c4.default_config()
    for key, value in overrides.items():
        cfg[key] = value
    built = c4.build(cfg, _env())
    flow = iter(docs)
    for step in built.steps:
        flow = step.run(flow)
    return list(flow), built.steps


def _page(*lines):
    return Document(text="\n".join(lines), id="p")


def _stat(steps, key):
    return sum(s.stats[key].total for s in steps if key in s.stats.stats)


def test_defaults_are_c4s_published_thresholds():
    cfg = c4.default_config()
    assert (cfg.min_words_per_line, cfg.min_sentences, cfg.max_word_length) == (3, 5, 1000)
    assert cfg.enabled and cfg.badwords_file == ""


def test_good_page_is_kept_unchanged():
    out, _ = _run([_page(*GOOD)])
    assert [d.text for d in out] == ["\n".join(GOOD)]


def test_lines_without_terminal_punctuation_or_with_ellipsis_are_dropped():
    out, steps = _run([_page(*GOOD, "Menu Home About Contact", "And then it went on...")])
    assert out[0].text == "\n".join(GOOD)
    assert _stat(steps, "line-filter-no_terminal_punc") == 2


def test_lines_under_three_words_are_dropped():
    out, steps = _run([_page(*GOOD, "Two words.")])
    assert out[0].text == "\n".join(GOOD)
    assert _stat(steps, "line-filter-too_few_words") == 1


def test_javascript_and_policy_lines_are_dropped():
    extra = ["Please enable JavaScript to view this page.", "This site uses cookies to improve things.",
             "Read our Privacy Policy before you continue."]
    out, steps = _run([_page(*GOOD, *extra)])
    assert out[0].text == "\n".join(GOOD)
    assert _stat(steps, "line-filter-javascript") == 1 and _stat(steps, "line-filter-policy") == 2


def test_word_over_1000_characters_drops_the_line():
    out, _ = _run([_page(*GOOD, "A " + "x" * 1001 + " word here.")])
    assert out[0].text == "\n".join(GOOD)


def test_citations_are_stripped():
    out, _ = _run([_page(*GOOD, "This claim needs support.[citation needed]", "Another claim here.[12]")])
    assert out[0].text.endswith("This claim needs support.\nAnother claim here.")


@pytest.mark.parametrize("line,reason", [("Lorem ipsum dolor sit amet.", "lorem_ipsum"),
                                         ("The function f { returns } one.", "curly_bracket")])
def test_lorem_ipsum_and_curly_brackets_drop_the_page(line, reason):
    out, steps = _run([_page(*GOOD, line)])
    assert out == [] and _stat(steps, f"dropped_{reason}") == 1


def test_fewer_than_five_sentences_drops_the_page():
    # GOOD has 5 sentences (line 2 has two); removing one leaves 4.
    out, steps = _run([_page(*GOOD[1:])])
    assert out == [] and _stat(steps, "dropped_too_few_sentences") == 1
    out, _ = _run([_page(*GOOD[1:])], min_sentences=4)
    assert len(out) == 1


def test_abbreviations_do_not_split_sentences():
    line = "Mr. Smith met Dr. Jones at noon."
    out, _ = _run([_page(line)], min_sentences=2)
    assert out == []  # one sentence, not three
    out, _ = _run([_page(line)], min_sentences=1)
    assert len(out) == 1


def test_each_rule_can_be_switched_off():
    out, _ = _run([_page(*GOOD, "Lorem ipsum dolor sit amet.")], lorem_ipsum=False)
    assert len(out) == 1
    out, _ = _run([_page(*GOOD, "Enable javascript now please.")], javascript=False)
    assert out[0].text.endswith("Enable javascript now please.")


def test_badwords_from_a_local_file(tmp_path):
    path = tmp_path / "badwords.txt"
    path.write_text("# comment\nbadword\nnaughty phrase\n")
    pages = [_page(*GOOD), _page(*GOOD, "This has a badword in it."),
             _page(*GOOD, "A naughty phrase appears here."), _page(*GOOD, "Badwordy is not the word.")]
    out, steps = _run(pages, badwords_file=str(path))
    assert len(out) == 2 and _stat(steps, "dropped_badwords") == 2


def test_no_badwords_file_means_rule_off_and_says_so():
    out, steps = _run([_page(*GOOD), _page(*GOOD)])
    assert len(out) == 2 and _stat(steps, "badwords_rule_off") == 2


def test_missing_badwords_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="badwords_file"):
        _run([], badwords_file=str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no words"):
        _run([], badwords_file=str(empty))


def test_config_file_lists_c4_then_ccnet_stages():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "prepare", "c4.py")
    spec = importlib.util.spec_from_file_location("c4_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    assert cfg.stages == ("c4_quality", "line_dedup", "language") and cfg.c4_quality.min_sentences == 5


def test_steps_survive_pickling_for_multiprocess_executors():
    steps = pickle.loads(pickle.dumps(c4.build(c4.default_config(), _env()).steps))
    out = list(steps[1].run(steps[0].run(iter([_page(*GOOD)]))))
    assert [d.text for d in out] == ["\n".join(GOOD)]
