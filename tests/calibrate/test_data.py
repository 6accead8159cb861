"""Data sources: SQuAD v1.1/v2.0, JSONL, the builtin generator, clear errors for bad files, disjoint splits."""

import json
from pathlib import Path

import pytest
import torch

from calibrate.sources import DataError, read_items, split_items
from calibrate.sources.fictional import generate_items
from service.runtime.loading import LoadedModel
from service.runtime.pairing import pair_indices, piece_pairs
from tests.tiny import corpus

SQUAD_V1 = {
    "version": "1.1",
    "data": [
        {
            "title": "Varn",
            "paragraphs": [
                {
                    "context": "Varn mill was built in 1874 by Quill.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "When was Varn mill built?",
                            "answers": [{"text": "1874", "answer_start": 22}],
                        },
                        {
                            "id": "q2",
                            "question": "Who built Varn mill?",
                            "answers": [{"text": "Quill", "answer_start": 31}],
                        },
                    ],
                },
                {
                    "context": "Oskel bridge is made of stone.",
                    "qas": [
                        {
                            "id": "q3",
                            "question": "What is Oskel bridge made of?",
                            "answers": [{"text": "stone", "answer_start": 24}],
                        }
                    ],
                },
            ],
        }
    ],
}
SQUAD_V2 = {
    "version": "v2.0",
    "data": [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": "Brede harbor opened in 1903.",
                    "qas": [
                        {
                            "id": "a",
                            "question": "When did Brede harbor open?",
                            "answers": [{"text": "1903", "answer_start": 23}],
                            "is_impossible": False,
                        },
                        {"id": "b", "question": "Who closed Brede harbor?", "answers": [], "is_impossible": True},
                    ],
                }
            ],
        }
    ],
}


def write(tmp_path: Path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_squad_v1_and_v2(tmp_path: Path) -> None:
    items = read_items(write(tmp_path, "v1.json", SQUAD_V1))
    assert [it.id for it in items] == ["q1", "q2", "q3"]
    assert items[0].answers == ["1874"] and items[0].context.startswith("Varn mill")
    v2 = read_items(write(tmp_path, "v2.json", SQUAD_V2))
    assert [it.id for it in v2] == ["a"]  # the unanswerable question is skipped


def test_jsonl_with_context_or_text(tmp_path: Path) -> None:
    rows = [{"context": "A b c.", "question": "q?", "answers": ["b"]}, {"text": "Just a passage."}]
    items = read_items(write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n"))
    assert items[0].has_qa and not items[1].has_qa and items[1].context == "Just a passage."


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("nodata.json", {"version": "1.1"}, "no top-level 'data' list"),
        ("noctx.json", {"data": [{"paragraphs": [{"qas": []}]}]}, r"paragraphs\[0\] has no 'context'"),
        (
            "noq.json",
            {"data": [{"paragraphs": [{"context": "x", "qas": [{"answers": [{"text": "x"}]}]}]}]},
            "lacks a question",
        ),
        ("bad.jsonl", '{"context": "ok"}\n{broken\n', r"bad.jsonl:2: invalid JSON"),
        ("empty.jsonl", '{"question": "q"}\n', r"empty.jsonl:1: each line needs"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, name: str, content: object, message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as info:
        read_items(path)
    assert name in str(info.value)


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(DataError, match="no such file"):
        read_items("/nonexistent/squad.json")
    with pytest.raises(DataError, match="unknown builtin.*builtin:fictional-qa"):
        read_items("builtin:nope")


def test_builtin_generator_is_seeded_and_answers_are_spans() -> None:
    a, b, c = generate_items(50, seed=3), generate_items(50, seed=3), generate_items(50, seed=4)
    assert [it.context for it in a] == [it.context for it in b]
    assert [it.context for it in a] != [it.context for it in c]
    for it in a:
        assert it.has_qa
        start = it.answer_starts[0]
        assert it.context[start : start + len(it.answers[0])] == it.answers[0]
        assert 2 <= it.context.count(". ") + 1 <= 4


def test_split_keeps_contexts_apart() -> None:
    items = read_items("builtin:fictional-qa", builtin_size=120)
    calib, held = split_items(items, 80, 30, seed=0)
    assert len(calib) == 80 and len(held) == 30
    assert not {it.context for it in calib} & {it.context for it in held}


def test_pairing_by_character_ends() -> None:
    # "the mill": source splits "mill" as "mi"+"ll"; target keeps "mill" whole; a special token has an empty span.
    src = [(0, 3), (4, 6), (6, 8)]
    tgt = [(0, 0), (0, 3), (4, 8)]
    assert pair_indices(src, tgt) == ([0, 2], [1, 2])


def test_a_jsonl_file_named_json_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    path.write_text('{"text": "one"}\n{"text": "two"}\n')
    with pytest.raises(DataError, match="name the file .jsonl"):
        read_items(str(path))


def test_layer_range_errors_say_why() -> None:
    from calibrate.layers import check_range

    with pytest.raises(ValueError, match="layer 5 is the output of its last block"):
        check_range([5], 5, "tiny", "--target-layers", allow_last=False)
    with pytest.raises(ValueError, match=r"layers 0..5 \(0 = embeddings"):
        check_range([6], 5, "tiny", "--layers")


def test_piece_pairs_pair_each_source_token_with_the_target_token_for_the_same_characters() -> None:
    # "the mill": the source cuts " mill" as " mi" + "ll"; the target reads " mi" as one token and "ll" as two; the
    # last character comes as two byte tokens with one span (only the last is kept).
    vocab = {"the": [7], " mi": [8], "ll": [9, 9], " é": [6]}
    text = "the mill é"
    src = [(0, 3), (3, 6), (6, 8), (8, 10), (8, 10)]

    def pieces(texts: list[str]) -> list[list[int]]:
        return [vocab[t] for t in texts]

    assert piece_pairs(text, src, pieces) == ([0, 1, 4], [7, 8, 6])
    assert piece_pairs(text, [(0, 0), (0, 3)], pieces) == ([1], [7])  # an empty span is no token's text


def test_span_pairing_targets_the_embeddings_of_the_same_characters(tiny: dict[str, LoadedModel]) -> None:
    from calibrate.sweep import Side, gather
    from service.runtime.encode import encode

    texts = corpus(6, seed=5)
    llama, gemma = tiny["llama"], tiny["gemma3"]
    src = Side("llama", llama, encode(llama, texts, [0, 1]))
    # Source = target: every token's characters are one token of the target, so both pairings pair the same rows.
    same = Side("llama", llama, encode(llama, texts, [0, 1]))
    end, span = gather(src, same, list(range(6)), 1, 0, "end"), gather(src, same, list(range(6)), 1, 0, "span")
    assert torch.equal(end[0], span[0]) and torch.equal(end[1], span[1])
    # Another tokenizer: each row is the target's embedding of the source token's own characters.
    tgt = Side("gemma3", gemma, encode(gemma, texts, [0, 2]))
    x, y = gather(src, tgt, [0], (0, 1), 0, "span")
    a = src.encoded[0]
    si, ids = piece_pairs(a.text, a.offsets, gemma.tokenize_pieces)
    assert len(si) == len(x) and len(si) > len(pair_indices(a.offsets, tgt.encoded[0].offsets)[0]) // 2
    assert torch.equal(x, a.at((0, 1))[si])
    assert torch.allclose(y, gemma.stack.embed(torch.tensor([ids]))[0].float())
    # Deeper target layers read context: they keep the pairing by common ends.
    assert torch.equal(gather(src, tgt, [0], 1, 2, "span")[1], gather(src, tgt, [0], 1, 2, "end")[1])
    with pytest.raises(ValueError, match="pairing must be one of end, span"):
        gather(src, tgt, [0], 1, 0, "middle")
