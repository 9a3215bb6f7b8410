"""The keyword classifier (SPEC 5.1 and 14.1) and classify()'s merging."""

from __future__ import annotations

import pytest

from llmrouter import classifiers
from llmrouter.canonical import Image, Message, Request, Text, ToolCall, ToolResult
from llmrouter.classifiers import classify, keyword
from llmrouter.config import Entry


def make(content: str = "hi", *, system: str | None = None, messages: list[Message] | None = None) -> Request:
    return Request(
        model="test-model",
        messages=messages if messages is not None else [Message("user", [Text(content)])],
        system=system,
    )


def run(settings: dict, req: Request) -> list[str]:
    tags, warnings = classify(req, {"keyword": Entry(enabled=True, settings=settings)})
    assert warnings == []
    return tags


# --- SPEC 14.1 ------------------------------------------------------------------


def test_tags_on_keyword_match():
    settings = {"tags": {"vision": ["image", "photo"], "nsfw": ["banned"]}}
    assert run(settings, make("Can you describe this Image for me?")) == ["vision"]


def test_tags_video_requests():
    settings = {
        "tags": {
            "vision": ["image", "photo", "picture", "screenshot"],
            "video": ["video", "clip", "footage"],
        }
    }
    assert run(settings, make("Can you summarize this video clip for me?")) == ["video"]


def test_no_match_returns_empty():
    settings = {"tags": {"vision": ["image", "photo"]}}
    assert run(settings, make("What's the weather like today?")) == []


def test_no_config_returns_empty():
    assert run({}, make("anything")) == []


# --- the original's semantics ---------------------------------------------------


def test_tags_come_out_in_alphabetical_order():
    settings = {"tags": {"zeta": ["z"], "alpha": ["a"], "Mid": ["m"]}}
    assert run(settings, make("a m z")) == ["Mid", "alpha", "zeta"]


def test_substring_semantics_by_default():
    settings = {"tags": {"code": ["class"], "danger": ["error"], "py": ["def "]}}
    assert run(settings, make("a classic terror")) == ["code", "danger"]
    assert run(settings, make("undefined")) == []  # "def " needs its trailing space
    assert run(settings, make("undef x")) == ["py"]  # ...but no word boundary


def test_haystack_is_system_and_every_turn_any_role():
    settings = {"tags": {"s": ["sysword"], "a": ["assistword"], "u": ["userword"]}}
    req = make(
        system="SYSWORD here",
        messages=[Message("user", [Text("userword")]), Message("assistant", [Text("assistword")])],
    )
    assert run(settings, req) == ["a", "s", "u"]


def test_turns_are_joined_with_a_space():
    # system "ab" and turn "cd" make "ab cd": "b c" matches, "bc" does not.
    req = make("cd", system="ab")
    assert run({"tags": {"x": ["b c"], "y": ["bc"]}}, req) == ["x"]


def test_only_text_parts_are_scanned():
    req = make(
        messages=[
            Message("user", [Image(media_type="image/png", data="aW1hZ2U=", url="http://x/image.png")]),
            Message("assistant", [ToolCall("1", "image_tool", '{"image": 1}')]),
            Message("user", [ToolResult("1", [Text("image found")])]),
        ]
    )
    assert run({"tags": {"vision": ["image"]}}, req) == []


def test_non_array_values_and_non_string_keywords_are_skipped():
    settings = {"tags": {"a": "hello", "b": [1, None, "hello"], "c": {"x": "hello"}}}
    assert run(settings, make("hello")) == ["b"]
    assert run({"tags": ["hello"]}, make("hello")) == []


def test_empty_keyword_never_matches():
    """Fixed gap: the original let an empty keyword tag every request."""
    assert run({"tags": {"all": [""], "none": []}}, make("anything")) == []


def test_unicode_case_folding():
    assert run({"tags": {"de": ["ÜBER"]}}, make("Was ist über?")) == ["de"]


# --- opt-in settings ------------------------------------------------------------


def test_word_boundary_matches_whole_words_only():
    settings = {"word_boundary": True, "tags": {"code": ["class"], "danger": ["error"]}}
    assert run(settings, make("a classic terror")) == []
    assert run(settings, make("a class, an error.")) == ["code", "danger"]


def test_word_boundary_trailing_space_keyword_means_the_word():
    settings = {"word_boundary": True, "tags": {"py": ["def "], "rs": ["fn "]}}
    assert run(settings, make("def")) == ["py"]  # at the very end: still the word
    assert run(settings, make("undefined fnord")) == []
    assert run(settings, make("write fn main")) == ["rs"]


def test_word_boundary_phrases_and_symbols():
    settings = {"word_boundary": True, "tags": {"ml": ["machine learning"], "cpp": ["c++"], "net": [".net"]}}
    assert run(settings, make("Machine\n  Learning rocks")) == ["ml"]
    assert run(settings, make("machine learnings")) == []
    assert run(settings, make("c++17 and asp.net")) == ["cpp", "net"]
    assert run(settings, make("abc++")) == []  # starts with a word char: needs a boundary before


def test_word_boundary_blank_keyword_never_matches():
    assert run({"word_boundary": True, "tags": {"x": ["  "]}}, make("a b")) == []


def test_scan_last_user_ignores_system_and_history():
    settings = {"scan": "last_user", "tags": {"vision": ["image"], "code": ["code"]}}
    req = make(
        system="you can see images",
        messages=[
            Message("user", [Text("show me an image")]),
            Message("assistant", [Text("here is code")]),
            Message("user", [Text("write some code")]),
            Message("user", [ToolResult("1", [Text("image")])]),  # tool-only turn skipped
        ],
    )
    assert run(settings, req) == ["code"]
    assert run({**settings, "scan": "all"}, req) == ["code", "vision"]


def test_invalid_settings_skip_the_classifier_with_a_warning():
    for bad in ({"scan": "first"}, {"word_boundary": "yes"}):
        tags, warnings = classify(make("x"), {"keyword": Entry(True, {"tags": {"t": ["x"]}, **bad})})
        assert tags == []
        assert len(warnings) == 1 and warnings[0].startswith("classifier 'keyword' failed: ")


# --- classify -------------------------------------------------------------------


def test_disabled_or_missing_classifier_does_not_run():
    req = make("image")
    assert classify(req, {"keyword": Entry(False, {"tags": {"v": ["image"]}})}) == ([], [])
    assert classify(req, {}) == ([], [])


def test_plugin_tags_are_kept_first_and_deduplicated():
    """Fixed gap 14: tags set by on_start plugins are merged, not overwritten."""
    req = make("image")
    req.tags = ["from-plugin", "vision", "from-plugin"]
    tags, _ = classify(req, {"keyword": Entry(True, {"tags": {"a": ["image"], "vision": ["image"]}})})
    assert tags == ["from-plugin", "vision", "a"]
    assert req.tags == ["from-plugin", "vision", "from-plugin"]  # classify does not mutate


def test_a_raising_classifier_is_skipped(monkeypatch):
    def broken(req, settings):
        raise RuntimeError("boom")

    monkeypatch.setattr(classifiers, "REGISTRY", {"broken": broken, "keyword": keyword})
    entries = {"broken": Entry(True), "keyword": Entry(True, {"tags": {"t": ["hi"]}})}
    assert classify(make("hi"), entries) == (["t"], ["classifier 'broken' failed: boom"])


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_blank_requests(text):
    assert run({"tags": {"t": ["x"]}}, make(text)) == []
