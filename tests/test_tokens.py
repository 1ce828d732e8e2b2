"""Token roles come from token ids: the first [EoT] index is right for multi-token words and at the 77-token limit."""

import torch

from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_sd_pipeline
from trce_ray.models.tokenizer import EOS_ID, clip_tokenizer
from trce_ray.models.tokens import first_eot_index, key_positions


def test_clip_tokenizer_matches_published_ids():
    tok = clip_tokenizer()
    assert tok("a photo of a nude woman").input_ids == [49406, 320, 1125, 539, 320, 16630, 2308, 49407]
    assert len(tok.get_vocab()) == 49408


def test_first_eot_counts_tokens_not_words():
    tok = clip_tokenizer()
    prompts = ["nudity pornography", "a photo of a nude woman", "explicit pornography, nudity"]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    eot = first_eot_index(ids, EOS_ID)
    unpadded = [len(tok(p).input_ids) - 1 for p in prompts]
    assert eot.tolist() == unpadded == [6, 7, 8]
    # The official code's word count (words + 1) lands on a keyword sub-token, not on [EoT], for multi-token words.
    word_count = [len(p.split()) + 1 for p in prompts]
    assert word_count[0] != eot[0] and word_count[2] != eot[2]


def test_first_eot_at_the_77_token_limit():
    tok = clip_tokenizer()
    long_prompt = " ".join(["pornography"] * 60)  # 3 tokens each: far beyond 75
    ids = tok(
        [long_prompt, "a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids[0, -1] == EOS_ID and (ids[0, :-1] != EOS_ID).all()
    assert first_eot_index(ids, EOS_ID).tolist() == [76, 3]


def test_sd2_padding_is_not_eot():
    pipe = tiny_sd_pipeline(family="sd2")
    out = adapter_for(pipe).encode_text(["a photo of nudity"])
    ids = out.input_ids[0]
    assert out.eot_index.item() == 6 and ids[6] == EOS_ID and ids[7] == 0  # pad "!" = id 0 follows


def test_adapter_eot_index_uses_ids(tiny_pipe):
    out = adapter_for(tiny_pipe).encode_text(["nudity", "a photo of pornography"])
    assert out.eot_index.tolist() == [3, 7]
    assert torch.equal(out.input_ids[torch.arange(2), out.eot_index], torch.tensor([EOS_ID, EOS_ID]))


def test_key_positions_cover_multi_token_keyword():
    tok = clip_tokenizer()
    prompt = "a photo of pornography art"
    ids = tok(prompt).input_ids
    pos = key_positions(tok, prompt, (11, 22))
    assert pos == [4, 5, 6]
    assert tok.decode([ids[p] for p in pos]).replace(" ", "") == "pornography"


def test_key_positions_past_the_limit_are_dropped():
    tok = clip_tokenizer()
    prompt = "cat " * 80 + "nudity"
    assert key_positions(tok, prompt, (len(prompt) - 6, len(prompt))) == []
