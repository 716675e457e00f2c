"""The StackExchange stage: Posts.xml reading, site list, HTML removal, answers by score."""

import importlib.util
import json
import os

import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError
from llama_jax.prepare import pipeline, stackexchange, stage
from llama_jax.prepare.config import source_config
from llama_jax.prepare.stackexchange import StackExchangeXmlReader, html_to_text

POSTS = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" Score="10" Title="How do I add numbers?"
       Body="&lt;p&gt;I want &lt;code&gt;1 + 1&lt;/code&gt;.&lt;/p&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="3" Body="&lt;p&gt;Use a calculator.&lt;/p&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Score="7" Body="&lt;p&gt;It is &lt;b&gt;2&lt;/b&gt;.&lt;/p&gt;" />
  <row Id="4" PostTypeId="1" Score="1" Title="Unanswered?" Body="&lt;p&gt;Anyone?&lt;/p&gt;" />
  <row Id="5" PostTypeId="2" ParentId="1" Score="3" Body="&lt;p&gt;Count on fingers.&lt;/p&gt;" />
  <row Id="6" PostTypeId="2" ParentId="99" Score="1" Body="&lt;p&gt;Orphan.&lt;/p&gt;" />
  <row Id="7" PostTypeId="1" Score="1" Title="No body" />
  <row Id="8" PostTypeId="5" Body="&lt;p&gt;A tag wiki.&lt;/p&gt;" />
  <row Id="x9" PostTypeId="2" ParentId="1" Score="1" Body="bad id" />
</posts>
"""

EXPECTED_Q1 = "How do I add numbers?\n\nI want 1 + 1.\n\nIt is 2.\n\nUse a calculator.\n\nCount on fingers."


def _posts(tmp_path, site="math.stackexchange.com", text=POSTS):
    folder = tmp_path / site
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Posts.xml").write_text(text)
    return str(folder / "Posts.xml")


def _build(**overrides):
    cfg = stackexchange.default_config()
    for key, value in overrides.items():
        cfg[key] = value
    return stackexchange.build(cfg, stage.StageEnv(name="stackexchange", work_dir="/tmp/unused", tasks=1))


def _run(built, docs):
    flow = iter(docs)
    for step in built.steps:
        flow = step.run(flow)
    return list(flow)


def test_28_sites():
    assert len(stackexchange.SITES) == 28 == len(set(stackexchange.SITES))
    assert stackexchange.site_key("math.stackexchange.com") == stackexchange.site_key("math") == "math"
    assert stackexchange.site_key("https://superuser.com/") == "superuser"


def test_html_removed_entities_decoded():
    assert html_to_text("<p>a &amp; b</p><p>c<br/>d</p>") == "a & b\n\nc\nd"
    assert html_to_text("<ul><li>one</li><li>two</li></ul>") == "- one\n- two"


def test_xml_reader_then_stage_one_doc_per_question_answers_by_score(tmp_path):
    reader = StackExchangeXmlReader([_posts(tmp_path)])
    docs = list(reader.run())
    assert [d.id for d in docs] == ["math.stackexchange.com/1", "math.stackexchange.com/4"]
    assert reader.stats["skipped_orphan_answer"].total == 1
    assert reader.stats["skipped_row_missing_field"].total == 1
    assert reader.stats["skipped_row_bad_number"].total == 1
    built = _build()
    out = _run(built, docs)
    assert out[0].text == EXPECTED_Q1  # 7, then the two 3s by post id
    assert out[1].text == "Unanswered?\n\nAnyone?"
    assert out[0].metadata["answer_count"] == 3 and "answers" not in out[0].metadata


def test_posts_xml_through_the_cli_pipeline(tmp_path):
    cfg = source_config(("stackexchange",))
    cfg.input, cfg.output = _posts(tmp_path / "in"), str(tmp_path / "out")
    cfg.input_format = "stackexchange_xml"
    summary = pipeline.run(cfg, print_table=False)
    with open(tmp_path / "out" / "data" / "00000.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f]
    assert texts == [EXPECTED_Q1, "Unanswered?\n\nAnyone?"]
    dropped = summary["stages"][0]["dropped"]  # the reader's counted skips
    assert dropped["skipped_orphan_answer"] == 1 and dropped["skipped_row_missing_field"] == 1


def test_min_answers_and_site_list(tmp_path):
    docs = list(StackExchangeXmlReader([_posts(tmp_path)]).run())
    built = _build(min_answers=1)
    assert len(_run(built, docs)) == 1 and built.steps[1].stats["dropped_too_few_answers"].total == 1
    small = list(StackExchangeXmlReader([_posts(tmp_path, site="cooking.stackexchange.com")]).run())
    built = _build()
    assert _run(built, small) == [] and built.steps[0].stats["dropped_site_not_kept"].total == 2


def test_malformed_xml_is_a_counted_skip_keeping_what_was_read(tmp_path):
    broken = POSTS.replace("</posts>", "<row Id=\"9\" PostTypeId=\"1\" Body=\"x\"")  # truncated file
    reader = StackExchangeXmlReader([_posts(tmp_path, text=broken)])
    docs = list(reader.run())
    assert [d.id for d in docs] == ["math.stackexchange.com/1", "math.stackexchange.com/4"]
    assert reader.stats["skipped_malformed_xml"].total == 1


def test_jsonl_shaped_records_and_missing_fields():
    good = Document(text="<p>Q?</p>", id="q", metadata={
        "site": "superuser.com", "title": "T", "answers": [{"score": 1, "text": "<p>low</p>"},
                                                           {"score": "5", "text": "<i>high</i>"}]})
    no_answers = Document(text="<p>Q?</p>", id="n", metadata={"site": "superuser"})
    bad_answer = Document(text="<p>Q?</p>", id="b", metadata={"site": "superuser", "answers": [{"text": "x"}]})
    no_site = Document(text="<p>Q?</p>", id="s", metadata={"answers": []})
    built = _build()
    out = _run(built, [good, no_answers, bad_answer, no_site])
    assert [d.text for d in out] == ["T\n\nQ?\n\nhigh\n\nlow"]
    stats = built.steps[1].stats
    assert stats["dropped_no_answers_field"].total == 1 and stats["dropped_malformed_answer"].total == 1
    assert built.steps[0].stats["dropped_no_site"].total == 1


def test_config_errors_and_file():
    with pytest.raises(ConfigError, match="sites"):
        _build(sites=())
    with pytest.raises(ConfigError, match="min_answers"):
        _build(min_answers=-1)
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "prepare", "stackexchange.py")
    spec = importlib.util.spec_from_file_location("se_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().stages == ("stackexchange",)
