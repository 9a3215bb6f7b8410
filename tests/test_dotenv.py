import pytest

from llmrouter.dotenv import load_dotenv, parse_dotenv


@pytest.mark.parametrize(
    "line, expected",
    [
        ("A=1", {"A": "1"}),
        ("export A=1", {"A": "1"}),
        ("export   A = spaced value  ", {"A": "spaced value"}),
        ("A=", {"A": ""}),
        ("A= # only a comment", {"A": ""}),
        ("A=value # trailing comment", {"A": "value"}),
        ("A=value\t# tab before comment", {"A": "value"}),
        ("A=a#b", {"A": "a#b"}),
        ("A='single # not a comment'", {"A": "single # not a comment"}),
        ("A='no \\n escapes'", {"A": "no \\n escapes"}),
        ('A="two\\nlines"', {"A": "two\nlines"}),
        ('A="tab\\there \\"q\\" back\\\\slash"', {"A": 'tab\there "q" back\\slash'}),
        ('A="unknown \\x escape"', {"A": "unknown \\x escape"}),
        ('A="hash # inside" # comment', {"A": "hash # inside"}),
        ("A=sk-abc=def", {"A": "sk-abc=def"}),
        ("A_b9=x", {"A_b9": "x"}),
        # invalid lines are skipped
        ("no equals sign", {}),
        ("9BAD=x", {}),
        ("BAD-NAME=x", {}),
        ("A='unclosed", {}),
        ('A="unclosed', {}),
        ("A='closed' junk", {}),
        ('A="closed" junk', {}),
        ("# A=commented", {}),
        ("   ", {}),
    ],
)
def test_parse_single_line(line, expected):
    assert parse_dotenv(line) == expected


def test_parse_whole_file():
    text = (
        "# settings for the router\n"
        "\n"
        "OPENAI_API_KEY=sk-one\r\n"
        "export ANTHROPIC_API_KEY='sk-two'\n"
        "  # indented comment\n"
        "garbage line\n"
        'MULTI="a\\nb"\n'
        "OPENAI_API_KEY=sk-override\n"
    )
    assert parse_dotenv(text) == {
        "OPENAI_API_KEY": "sk-override",
        "ANTHROPIC_API_KEY": "sk-two",
        "MULTI": "a\nb",
    }


def test_load_sets_only_missing_variables(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=from-file\nB=from-file\nC=\n", encoding="utf-8")
    environ = {"A": "already", "C_OTHER": "x"}
    assert load_dotenv(str(path), environ) == ["B", "C"]
    assert environ == {"A": "already", "B": "from-file", "C": "", "C_OTHER": "x"}


def test_load_never_overrides_an_empty_variable(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=from-file\n", encoding="utf-8")
    environ = {"A": ""}
    assert load_dotenv(str(path), environ) == []
    assert environ == {"A": ""}


def test_load_missing_file_is_not_an_error(tmp_path):
    environ: dict[str, str] = {}
    assert load_dotenv(str(tmp_path / "absent.env"), environ) == []
    assert environ == {}


def test_load_directory_raises(tmp_path):
    with pytest.raises(OSError):
        load_dotenv(str(tmp_path), {})


def test_load_strips_bom_and_survives_bad_bytes(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfA=1\nB=\xff\xfe\n")
    environ: dict[str, str] = {}
    assert load_dotenv(str(path), environ) == ["A", "B"]
    assert environ["A"] == "1"
    assert environ["B"] == "\ufffd\ufffd"
