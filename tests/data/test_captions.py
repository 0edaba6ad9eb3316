"""Captions from sidecars and metadata.jsonl, and prompt templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from boothkit.data.captions import check_prompts_name_token, instance_prompts, read_captions
from boothkit.errors import BoothkitError
from boothkit.templates import render_prompt


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("a.jpg", "b.png", "c.JPG", "d.webp", "sub/e.jpg", "no_ext", ".hidden/f.jpg"):
        (root / name).write_bytes(b"not read")
    (root / "a.txt").write_text("a photo of {token} {class_noun} on a beach\n", encoding="utf-8")
    (root / "c.TXT").write_bytes("\ufeffça été {token}\r\nsecond line".encode())  # BOM, CRLF, unicode
    (root / "sub" / "e.txt").write_text("{token} in a sub folder")
    (root / "no_ext.txt").write_text("no extension {token}")
    (root / "empty.txt").write_text("   \n")
    (root / ".hidden" / "f.txt").write_text("hidden")
    (root / "metadata.jsonl").write_text(
        '{"file_name": "a.jpg", "text": "loses to the sidecar"}\n'
        "\n"
        '{"file_name": "./b.png", "text": "from metadata, {token}"}\n'
        '{"file_name": "sub\\\\e.jpg", "text": "loses too"}\n',
        encoding="utf-8",
    )
    return root


def test_read_captions_merges_sidecars_and_metadata(folder: Path) -> None:
    assert read_captions(folder) == {
        "a.jpg": "a photo of {token} {class_noun} on a beach",
        "b.png": "from metadata, {token}",
        "c.JPG": "ça été {token} second line",
        "sub/e.jpg": "{token} in a sub folder",
        "no_ext": "no extension {token}",
    }


def test_read_captions_of_a_folder_without_any(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    assert read_captions(tmp_path) == {}


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ("{not json", "is not valid JSON"),
        ('["a.jpg", "text"]', "is not a JSON object"),
        ('{"text": "no file"}', 'has no "file_name"'),
        ('{"file_name": "a.jpg", "text": 3}', 'has a non-string "text"'),
        ('{"file_name": "ok.jpg", "text": "fine"}', "already has a caption on line 1"),
    ],
)
def test_malformed_metadata_names_the_file_and_line(tmp_path: Path, line: str, phrase: str) -> None:
    meta = tmp_path / "metadata.jsonl"
    meta.write_text('{"file_name": "ok.jpg", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(BoothkitError) as caught:
        read_captions(tmp_path)
    assert f"{meta}, line 2" in caught.value.message and phrase in caught.value.message


def test_read_captions_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BoothkitError, match="is not a folder"):
        read_captions(tmp_path / "nope")


def test_non_utf8_caption_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(BoothkitError, match=r"a\.txt is not UTF-8"):
        read_captions(tmp_path)


@pytest.mark.parametrize(
    ("template", "class_noun", "expected"),
    [
        ("a photo of {token} {class_noun}", "dog", "a photo of sks dog"),
        ("a photo of {token} {class_noun}", None, "a photo of sks"),
        ("a {class_noun} photo of {token}", "", "a photo of sks"),
        ("{token} {class_noun}, smiling", None, "sks, smiling"),
        ("{{literal}} {token}", "dog", "{literal} sks"),
        ("no placeholders", "dog", "no placeholders"),
    ],
)
def test_render_prompt(template: str, class_noun: str | None, expected: str) -> None:
    assert render_prompt(template, token="sks", class_noun=class_noun) == expected


@pytest.mark.parametrize(
    ("template", "phrase"),
    [
        ("a photo of {tokn}", "{tokn}"),
        ("a photo of {}", "{}"),
        ("a photo of {0}", "{0}"),
        ("{token!r}", "{token!r}"),
        ("a photo of {token", "unmatched brace"),
        ("a } photo", "unmatched brace"),
    ],
)
def test_render_prompt_names_unknown_placeholders(template: str, phrase: str) -> None:
    with pytest.raises(BoothkitError) as caught:
        render_prompt(template, token="sks", class_noun="dog")
    assert phrase in caught.value.message


def test_instance_prompts_use_captions_then_the_template(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [folder / "a.jpg", folder / "b.png", folder / "d.webp", folder / "sub" / "e.jpg"]
    prompts = instance_prompts(
        images, folder, template="a photo of {token} {class_noun}", token="zwx", class_noun="cat"
    )
    assert prompts == [
        "a photo of zwx cat on a beach",
        "from metadata, zwx",
        "a photo of zwx cat",
        "zwx in a sub folder",
    ]
    monkeypatch.chdir(folder.parent)  # a relative folder with absolute image paths still matches
    relative = instance_prompts(images[:1], Path("photos"), template="{token}", token="zwx", class_noun=None)
    assert relative == ["a photo of zwx on a beach"]


def test_a_bad_placeholder_in_a_caption_names_the_image(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "a.txt").write_text("a {tokn}")
    with pytest.raises(BoothkitError, match=r"caption of a\.jpg: .*\{tokn\}"):
        instance_prompts([tmp_path / "a.jpg"], tmp_path, template="{token}", token="sks", class_noun=None)


def test_instance_prompts_must_name_the_token(folder: Path, tmp_path: Path) -> None:
    images = [folder / "a.jpg", folder / "b.png", folder / "d.webp"]
    check_prompts_name_token(images, folder, template="a photo of {token} {class_noun}", token="sks")
    check_prompts_name_token(images, folder, template="a photo of sks dog", token="sks")  # the word itself
    with pytest.raises(BoothkitError, match=r"--instance-prompt 'a photo of a dog' does not name the token"):
        check_prompts_name_token(images, folder, template="a photo of a dog", token="sks")
    with pytest.raises(BoothkitError, match="does not name the token"):
        check_prompts_name_token(images, folder, template="a photo of sksdog", token="sks")  # not a word
    # Textual inversion prompts hold the placeholder: the bare word would leave the embedding out.
    check_prompts_name_token(images, folder, template="a photo of <sks> dog", token="<sks>")
    with pytest.raises(BoothkitError, match="does not name the token"):
        check_prompts_name_token(images, folder, template="a photo of sks dog", token="<sks>")
    photos = tmp_path / "p"
    photos.mkdir()
    for name in ("x.jpg", "y.jpg"):
        (photos / name).write_bytes(b"")
    (photos / "y.txt").write_text("a photo of a dog on a beach")
    with pytest.raises(BoothkitError, match=r"caption of y\.jpg \('a photo of a dog on a beach'\)") as info:
        check_prompts_name_token(sorted(photos.glob("*.jpg")), photos, template="{token}", token="sks")
    assert "{token}" in (info.value.hint or "")
