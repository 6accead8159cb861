"""Detokenizing in the context of the tokens before: a SentencePiece-style decoder drops the space a sequence starts
with, so " One day," must not come back as "One day,"."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from service.runtime.generate import SamplingParams, generate
from service.runtime.loading import LoadedModel, fingerprint, start_token
from service.runtime.modes import NATIVE
from service.runtime.prompt import Prompt
from tests.tiny import corpus, make_model


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """A BPE tokenizer with SentencePiece's conventions: spaces become "▁" glued to the next word, and the decoder
    turns "▁" back into spaces and strips the one a text starts with (as Llama 2's and Mistral's do)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _model() -> LoadedModel:
    tok = sentencepiece_style()
    model = make_model("llama", len(tok), layers=2)
    return LoadedModel("sp", "sp", model, tok, fingerprint(model), start_token(tok))


def test_a_continuation_keeps_its_leading_space() -> None:
    m = _model()
    ids = m.tokenize("the old mill")[0]  # "▁the", "▁old", ...: how a model generates " the old mill"
    assert m.tokenizer.convert_ids_to_tokens(ids[:1])[0].startswith("▁")
    assert m.decode(ids) == "the old mill"  # the plain decoder loses the space: the bug being avoided
    assert m.decode_continuation(ids) == " the old mill"
    glued = [i for i in range(3, len(m.tokenizer)) if not m.tokenizer.convert_ids_to_tokens(i).startswith("▁")][:1]
    assert not m.decode_continuation(glued).startswith(" ")  # a piece glued to the previous word gets no space


def test_generated_text_is_decoded_in_context() -> None:
    m = _model()
    torch.manual_seed(0)
    prompt = Prompt(NATIVE, m.tokenize(" question:")[0], prefix_ids=m.tokenize("the mill was built by")[0])
    out = generate(m, [prompt], SamplingParams(max_new_tokens=6, ignore_eos=True))[0]
    assert out.text == m.decode_continuation(out.token_ids)
    first = m.tokenizer.convert_ids_to_tokens(out.token_ids[:1])[0]
    assert out.text.startswith(" ") == first.startswith("▁")
