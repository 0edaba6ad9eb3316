"""Prompt files: plain lists and the DreamBooth dataset's Python-style prompts_and_classes.txt."""

from __future__ import annotations

import pytest

from boothkit.errors import BoothkitError
from boothkit.prompt_files import choose_prompt_set, load_prompts, parse_prompt_sets
from conftest import SHARED


def test_the_dreambooth_prompt_file_parses_into_two_lists_of_25() -> None:
    text = (SHARED / "prompts_and_classes.txt").read_text(encoding="utf-8")
    sets = parse_prompt_sets(text)
    assert [s.name for s in sets] == ["object", "live"]
    assert [len(s.templates) for s in sets] == [25, 25]
    assert sets[0].templates[0] == "a {token} {class_noun} in the jungle"
    assert "a {token} {class_noun} wearing a santa hat" in sets[1].templates
    assert not any("backpack" in t for s in sets for t in s.templates)  # the class table is not prompts

    chosen, prompts = load_prompts(SHARED / "prompts_and_classes.txt", token="sks", class_noun="dog")
    assert chosen.name == "live" and prompts[0] == "a sks dog in the jungle" and len(prompts) == 25
    chosen, prompts = load_prompts(SHARED / "prompts_and_classes.txt", token="zwx", class_noun="teapot")
    assert chosen.name == "object" and prompts[-1] == "a cube shaped zwx teapot"
    chosen, _ = load_prompts(SHARED / "prompts_and_classes.txt", class_noun="dog", prompt_set="object")
    assert chosen.name == "object"
    with pytest.raises(BoothkitError, match="pass --class-noun"):
        load_prompts(SHARED / "prompts_and_classes.txt")


def test_plain_and_python_prompt_lines(tmp_path) -> None:
    plain = parse_prompt_sets("# a comment\n\na photo of {token} {class_noun}\n  a {token} on the moon  \n")
    assert len(plain) == 1 and plain[0].templates == (
        "a photo of {token} {class_noun}",
        "a {token} on the moon",
    )
    python = parse_prompt_sets(
        "Mine\nprompts = [\n"
        "'a {} {} in the rain'.format(unique_token, class_token),\n"
        '"the {1} called {0}".format(unique_token, class_token),\n'
        "'a {{literal}} {0}'.format(unique_token),\n"
        "'plain {token} line',\n]\n"
    )
    assert python[0].name == "mine"
    assert python[0].templates == (
        "a {token} {class_noun} in the rain",
        "the {class_noun} called {token}",
        "a {{literal}} {token}",
        "plain {token} line",
    )
    with pytest.raises(BoothkitError, match="neither the token nor the class"):
        parse_prompt_sets("p = [\n'a {0}'.format(os),\n]\n")
    with pytest.raises(BoothkitError, match="line 2"):
        parse_prompt_sets("p = [\n__import__('os').system('x'),\n]\n")
    with pytest.raises(BoothkitError, match="never closed"):
        parse_prompt_sets("p = [\n'a',\n")
    with pytest.raises(BoothkitError, match="not in the prompt file"):
        choose_prompt_set(python, "live", None)
    with pytest.raises(BoothkitError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")
