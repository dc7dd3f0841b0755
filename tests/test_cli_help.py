"""Every command's --help shows each option's default and, for --model, every accepted model form."""
from __future__ import annotations

import re
from functools import partial

import pytest

from tappa_utils import analysis
from tappa_utils.book import html_check
from tappa_utils.book.parser import build_parser as book_parser
from tappa_utils.kv import evaluate as kv_evaluate
from tappa_utils.kv import task_cli
from tappa_utils.preflight import MODEL_FORMS
from tappa_utils.prune import cli as prune_cli
from tappa_utils.tiny import card, train

MODEL_FORM_WORDS = ("tappa-tiny", "smollm2-135m", "local model folder", "Hugging Face id", "random:<shape>")


def _book_sub(name: str, capsys=None) -> str:
    sub = next(a for a in book_parser()._actions if a.dest == "cmd")
    return sub.choices[name].format_help()


def _printed(main, capsys) -> str:
    """What `main(["--help"])` prints; it exits (argparse) or returns (a command's `run_cli`) with status 0."""
    try:
        status = main(["--help"])
    except SystemExit as e:
        status = e.code
    assert status in (0, None)
    return capsys.readouterr().out


HELPS = {
    "analyze": lambda capsys: analysis.build_parser().format_help(),
    "kv-eval": lambda capsys: _printed(kv_evaluate._parse, capsys),
    "kv-tasks": lambda capsys: _printed(task_cli._parse, capsys),
    "prune-eval": lambda capsys: prune_cli.build_parser().format_help(),
    "train-tiny": lambda capsys: train.build_parser().format_help(),
    "model-card": lambda capsys: _printed(card.main, capsys),
    "book": lambda capsys: book_parser().format_help(),
    **{f"book {s}": partial(_book_sub, s)
       for s in ("build", "null", "ledger", "check-html", "lab", "execute", "params-table")},
    "check-html": lambda capsys: _printed(html_check.main, capsys),
}
WITH_MODEL = ("analyze", "kv-eval", "kv-tasks", "prune-eval", "book build")


def option_entries(text: str) -> dict[str, str]:
    """Each option's entry of a help text ('--seq-len SEQ_LEN' -> its whole help, lines joined)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.split("\n"):
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2) or ""
        elif current and line.startswith("    ") and line.strip():
            entries[current] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def test_option_entries_parser():
    text = ("usage: x [--a A] --b B\n\noptions:\n  -h, --help  show\n  --a A       first\n"
            "              more (default: 1)\n  --flag\n")
    assert option_entries(text) == {"-h, --help": "show", "--a A": "first more (default: 1)", "--flag": ""}


@pytest.mark.parametrize("command", list(HELPS))
def test_help_shows_every_default(command, capsys):
    text = HELPS[command](capsys)
    usage = " ".join(text.split("\n\n")[0].split())
    entries = option_entries(text)
    assert entries, f"{command}: no options found in its help"
    missing = []
    for head, help_text in entries.items():
        option, *value = head.split()
        if head.startswith("-h") or not value:
            continue  # --help and flags: off unless given
        if not re.search(r"\[" + re.escape(option) + r"[\] ]", usage):
            continue  # a required option has no default
        if "default" not in help_text.lower():
            missing.append(head)
    assert not missing, f"`{command} --help` shows no default for {missing}"


@pytest.mark.parametrize("command", WITH_MODEL)
def test_help_names_every_accepted_model_form(command, capsys):
    entries = option_entries(HELPS[command](capsys))
    model = " ".join(next(v for k, v in entries.items() if k.startswith("--model")).split())
    for word in MODEL_FORM_WORDS:
        assert word in model, f"`{command} --help`: --model does not mention {word!r}"
    assert "default" in model.lower()


def test_model_forms_are_the_accepted_ones():
    """Each form named in the help is accepted by the front door (tappa-tiny, smollm2-135m, random:<shape>)."""
    from tappa_utils.preflight import check_model

    for name in ("tappa-tiny", "smollm2-135m", "random:qwen2.5-0.5b"):
        assert name.split(":")[0] in MODEL_FORMS
        check_model(name)
