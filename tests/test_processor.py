"""Tokenizer, ChatML template and incremental detokenizer on a tiny trained byte-level BPE."""

import json
import re
import shutil

import pytest
from tokenizer_fixture import build_tokenizer

from omnistream.processor import StreamDecoder, Tokenizer, TokenizerError, chat_template

CHINESE = "今天天气很好，我们去公园散步吧。饕餮"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    build_tokenizer(directory, 320)
    return directory


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer(tok_dir)


def test_chat_template_system_user_exact():
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi there"}]
    assert chat_template(messages) == ("<|im_start|>system\nYou are helpful.<|im_end|>\n"
                                       "<|im_start|>user\nHi there<|im_end|>\n"
                                       "<|im_start|>assistant\n")


def test_chat_template_thinking_switch_and_no_generation_prompt():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    history = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert chat_template(messages, add_generation_prompt=False) == history
    assert chat_template(messages, enable_thinking=False) == history + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert chat_template(messages, enable_thinking=True) == history + "<|im_start|>assistant\n<think>\n"


def test_chat_template_text_parts_join():
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    assert chat_template([{"role": "user", "content": parts}]) == chat_template([{"role": "user",
                                                                                  "content": "Hello, world"}])


@pytest.mark.parametrize("messages, match", [
    ([], "empty chat"),
    ([{"role": "tool", "content": "x"}], "unknown role 'tool'"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "  \n"}], "message 1: user message has empty"),
    ([{"role": "user", "content": None}], "content must be a string"),
    ([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}], "type 'audio' is not supported"),
    ([{"role": "user", "content": [{"type": "text"}]}], "text part has no string 'text'"),
    (["hello"], "message 0: expected a dict"),
])
def test_chat_template_rejects_bad_messages(messages, match):
    with pytest.raises(TokenizerError, match=match):
        chat_template(messages)


@pytest.mark.parametrize("text", ["The quick brown fox, said hello world!", CHINESE, "mixed 中文 and English\n"])
def test_encode_decode_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids and max(ids) < 320
    assert tok.decode(ids) == text


def test_special_tokens_and_eos_ids(tok):
    im_start, im_end, eot = (tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert None not in (im_start, im_end, eot)
    assert tok.eos_ids == [im_end, eot]
    assert tok.stop_ids([eot, 7, im_end, 9]) == [im_end, eot, 7, 9] and tok.stop_ids([]) == tok.eos_ids
    assert tok.pad_id == eot
    assert tok.token_to_id("<never-in-vocab>") is None
    ids = tok.encode_chat([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert ids[0] == im_start and ids.count(im_start) == 2 and ids.count(im_end) == 1
    assert tok.token_to_id("<think>") in ids and tok.token_to_id("</think>") in ids
    assert tok.decode(ids, skip_special_tokens=False) == chat_template([{"role": "user", "content": "hi"}],
                                                                       enable_thinking=False)
    assert tok.decode(ids) == "user\nhi\nassistant\n<think>\n\n</think>\n\n"  # think tags are not special


def test_tokenizer_without_config_finds_eos_in_vocab(tok, tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    bare = Tokenizer(tmp_path)
    assert bare.eos_ids == tok.eos_ids and bare.pad_id is None


def test_stream_decoder_matches_one_shot_decode_on_split_characters(tok):
    ids = tok.encode(CHINESE)
    assert len(ids) > len(CHINESE)  # most characters span several byte tokens
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert "" in pieces  # a partial character was held back
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == tok.decode(ids) == CHINESE


def test_stream_decoder_skips_specials_and_flushes_cut_character(tok):
    ids = tok.encode_chat([{"role": "user", "content": "你好"}]) + tok.encode("饕")[:-1]  # ends mid-character
    decoder = StreamDecoder(tok)
    text = "".join(decoder.push(i) for i in ids)
    assert not text.endswith("\ufffd")
    tail = decoder.flush()
    assert tail.endswith("\ufffd")
    assert text + tail == tok.decode(ids)


def test_missing_directory_and_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match=f"{tmp_path} has no tokenizer.json"):
        Tokenizer(tmp_path)


def test_corrupt_files_raise_tokenizer_error(tok_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer(tmp_path)
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer(tmp_path)


def test_added_tokens_decoder_id_mismatch_is_an_error(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"5": {"content": "<|im_end|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=re.escape("'<|im_end|>' has id 5, but tokenizer.json gives")):
        Tokenizer(tmp_path)


def test_added_tokens_decoder_adds_tokens_missing_from_tokenizer_json(tok, tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["320"] = {"content": "<|vision_start|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    extended = Tokenizer(tmp_path)
    assert extended.token_to_id("<|vision_start|>") == 320
    assert extended.encode("a<|vision_start|>")[-1] == 320
    assert extended.vocab_size == tok.vocab_size + 1


def test_malformed_added_tokens_decoder_is_an_error(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x": {"content": "a"}}}))
    with pytest.raises(TokenizerError, match="malformed added_tokens_decoder"):
        Tokenizer(tmp_path)


def test_split_reasoning_separates_a_think_block_from_the_answer():
    from omnistream.processor import split_reasoning, think_block

    assert split_reasoning(think_block("17+25=42") + "Seventeen plus twenty-five is forty-two.") == (
        "17+25=42", "Seventeen plus twenty-five is forty-two.")
    assert split_reasoning("  Just an answer. ") == ("", "Just an answer.")
    assert split_reasoning("<think>\nstill thinking") == ("still thinking", "")
    assert split_reasoning("<think>\n\n</think>\n\nHi.") == ("", "Hi.")
