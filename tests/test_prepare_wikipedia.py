"""The Wikipedia stage: the paper's 20 languages and the wikitext cleaning rules."""

import bz2

import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError
from llama_jax.prepare import stage, wikipedia
from llama_jax.prepare.wikipedia import clean_wikitext

PAPER_LANGUAGES = {"bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
                   "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk"}


def _build(**overrides):
    cfg = wikipedia.default_config()
    for key, value in overrides.items():
        cfg[key] = value
    return wikipedia.build(cfg, stage.StageEnv(name="wikipedia", work_dir="/tmp/unused", tasks=1))


def _run(built, docs):
    flow = iter(docs)
    for step in built.steps:
        flow = step.run(flow)
    return list(flow)


def test_the_paper_languages():
    assert set(wikipedia.LANGUAGES) == PAPER_LANGUAGES and len(wikipedia.LANGUAGES) == 20


def test_language_filter_by_metadata_or_url_and_counted_drops():
    built = _build(markup="text")
    docs = [Document(text="a", id="1", metadata={"language": "fr"}),
            Document(text="b", id="2", metadata={"language": "ja"}),
            Document(text="c", id="3", metadata={"url": "https://sv.wikipedia.org/wiki/Sverige"}),
            Document(text="d", id="4", metadata={"url": "https://zh.wikipedia.org/wiki/X"}),
            Document(text="e", id="5")]
    assert [d.text for d in _run(built, docs)] == ["a", "c"]
    stats = built.steps[0].stats
    assert stats["dropped_language_not_kept"].total == 2 and stats["dropped_no_language"].total == 1
    assert stats["lang_fr"].total == 1


@pytest.mark.parametrize("wikitext,expected", [
    ("See [[Paris]].", "See Paris."),
    ("The [[France|French Republic]] and [[Seine]]s.", "The French Republic and Seines."),
    ("Visit [https://example.org the site] or [https://example.org].", "Visit the site or ."),
    ("Kept.<!-- a hidden\nnote -->", "Kept."),
    ("Text.<ref>A</ref> End.\n<references />\nAfter.", "Text. End.\n\nAfter."),
    ("A fact.<ref name=x>{{cite web|url=u}}</ref> More.<ref name=x/>", "A fact. More."),
    ("{{Infobox|name={{nested|x}}}}Body text.", "Body text."),
    ("Before.\n{| class=wikitable\n|-\n| a || b\n|}\nAfter.", "Before.\n\nAfter."),
    ("'''Bold''' and ''italic'' and '''''both'''''.", "Bold and italic and both."),
    ("== History ==\nText.\n=== Early ===\nMore.", "History\nText.\nEarly\nMore."),
    ("Text.\n[[File:Map.png|thumb|A map of [[Europe]]]]\n[[Category:Cities]]\n[[de:Paris]]", "Text."),
    ("[[Datei:Karte.png|mini|Karte]]Text. [[Kategorie:Stadt]]", "Text."),
    ("[[Файл:Карта.png|мини]]Текст. [[Категория:Города]]", "Текст."),
    ("* one\n* two\n# three", "one\ntwo\nthree"),
    ("Tom &amp; Jerry&nbsp;run.<br/>__NOTOC__", "Tom & Jerry run."),
    ("See [[:Category:Cities|the list]].", "See the list."),
])
def test_wikitext_rules(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


def test_cleaner_stage_drops_redirects_and_empty_pages():
    built = _build()
    docs = [Document(text="#REDIRECT [[Paris]]", id="r", metadata={"language": "en"}),
            Document(text="#WEITERLEITUNG [[Paris]]", id="r2", metadata={"language": "de"}),
            Document(text="{{only a template}}", id="e", metadata={"language": "en"}),
            Document(text="'''Paris''' is a city.", id="p", metadata={"language": "en"})]
    out = _run(built, docs)
    assert [d.text for d in out] == ["Paris is a city."]
    stats = built.steps[1].stats
    assert stats["dropped_redirect"].total == 2 and stats["dropped_empty"].total == 1


def test_text_markup_skips_cleaning():
    built = _build(markup="text")
    assert len(built.steps) == 1


@pytest.mark.parametrize("field,value,match", [("languages", ("en", "English"), "unknown language"),
                                               ("languages", (), "unknown language"),
                                               ("markup", "html", "markup")])
def test_config_errors(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _build(**{field: value})


DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="fr">
  <page><title>Paris</title><ns>0</ns><id>7</id>
    <revision><id>100</id><text xml:space="preserve">'''Paris''' est la [[capitale]] de la [[France]].</text></revision>
  </page>
  <page><title>Discussion:Paris</title><ns>1</ns><id>8</id>
    <revision><id>101</id><text>talk</text></revision>
  </page>
"""


def test_dump_reader_main_namespace_language_from_file_name(tmp_path):
    path = tmp_path / "frwiki-20220801-pages-articles.xml.bz2"
    with bz2.open(path, "wt") as f:
        f.write(DUMP + "</mediawiki>\n")
    docs = list(wikipedia.WikipediaDumpReader([str(path)]).run())
    assert [(d.id, d.metadata["language"], d.metadata["title"]) for d in docs] == [("fr/7", "fr", "Paris")]
    out = _run(_build(), docs)
    assert [d.text for d in out] == ["Paris est la capitale de la France."]


def test_dump_reader_truncated_file_is_a_counted_skip(tmp_path):
    path = tmp_path / "dewiki-latest-pages-articles.xml"
    path.write_text(DUMP)  # no closing tag
    reader = wikipedia.WikipediaDumpReader([str(path)])
    docs = list(reader.run())
    assert [d.id for d in docs] == ["de/7"] and reader.stats["skipped_malformed_xml"].total == 1
