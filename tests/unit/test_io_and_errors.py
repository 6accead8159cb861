"""Map files round-trip exactly and describe themselves; every documented bad input raises a clear error."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aligners import KINDS, MapFileError, NotFittedError, build, load, read_header

PARAMS = {
    "procrustes": {},
    "linear": {},
    "affine": {"lam": 0.5},
    "lora": {"base": "procrustes", "max_epochs": 2},
    "distill": {"hidden": 8},
}


def data(n: int = 200, d_src: int = 12, d_tgt: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_src, generator=g)
    return x, x @ torch.randn(d_src, d_tgt, generator=g) + torch.randn(n, d_tgt, generator=g) * 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_outputs(kind: str, tmp_path: Path) -> None:
    x, y = data()
    m = build(kind, **PARAMS[kind]).fit(x, y)
    meta = {"source": "smollm2", "layers": [8, 4], "metrics": {"r2": 0.8}, "n_items": 300}
    path = tmp_path / "sub" / f"{kind}.safetensors"
    m.save(str(path), meta)
    loaded, loaded_meta = load(path)
    assert type(loaded) is type(m)
    assert loaded.get_params() == m.get_params()
    assert loaded_meta == meta
    assert loaded.fit_info == m.fit_info
    assert m.tensors is not None and loaded.tensors is not None
    assert set(loaded.tensors) == set(m.tensors)
    assert all(torch.equal(loaded.tensors[k], m.tensors[k]) for k in m.tensors)  # the file keeps every bit
    # The same tensors give the same outputs up to the BLAS kernel's summation order (which can depend on memory
    # alignment and load), far below any difference a map could make.
    for dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(loaded.transform(x.to(dtype)), m.transform(x.to(dtype)), rtol=1e-6, atol=1e-6)


def test_header_is_plain_strings_and_self_describing(tmp_path: Path) -> None:
    x, y = data()
    path = tmp_path / "m.safetensors"
    build("affine").fit(x, y).save(str(path), {"target_layer": 4})
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert all(isinstance(v, str) for v in header.values())
    assert header["kind"] == "affine" and header["d_src"] == "12" and header["d_tgt"] == "10"
    assert json.loads(header["params"])["val_fraction"] == 0.1
    assert header["meta.target_layer"] == "4"
    assert read_header(path)["format_version"] == "1"


@pytest.mark.parametrize("kind", KINDS)
def test_transform_before_fit(kind: str) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        build(kind).transform(torch.randn(3, 4))
    assert issubclass(NotFittedError, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_fit_inputs(kind: str) -> None:
    m = build(kind)
    x, y = data(20, 4, 3)
    bad_nan = x.clone()
    bad_nan[3, 1] = float("nan")
    bad_inf = y.clone()
    bad_inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.fit(bad_nan, y)
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.fit(x, bad_inf)
    with pytest.raises(ValueError, match="2-D"):
        m.fit(x[0], y)
    with pytest.raises(ValueError, match="2-D"):
        m.fit(x, y[None])
    with pytest.raises(ValueError, match="same number of rows"):
        m.fit(x, y[:-1])
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.fit(x.numpy(), y)
    with pytest.raises(TypeError, match="floating-point"):
        m.fit(x.long(), y)
    with pytest.raises(ValueError, match="at least"):
        m.fit(x[:1], y[:1])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_transform_inputs(kind: str) -> None:
    x, y = data(50, 6, 5)
    m = build(kind, **PARAMS[kind]).fit(x, y)
    with pytest.raises(ValueError, match="width 7.*d_src=6"):
        m.transform(torch.randn(3, 7))
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.transform(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="2-D"):
        m.transform(torch.randn(6))


def test_unknown_kind_and_bad_params() -> None:
    with pytest.raises(ValueError, match="unknown aligner kind 'rotation'.*known kinds"):
        build("rotation")
    with pytest.raises(ValueError, match="lam"):
        build("linear", lam=-1.0)
    with pytest.raises(TypeError):
        build("procrustes", lam=1.0)


def test_saving_unfitted_or_unserialisable(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        build("affine").save(str(tmp_path / "x.safetensors"))
    x, y = data()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        build("affine").fit(x, y).save(str(tmp_path / "x.safetensors"), {"tensor": torch.zeros(1)})


def write_with_header(path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    save_file(tensors or {"weight": torch.zeros(2, 2)}, str(path), metadata=header)
    return path


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(MapFileError, match=r"garbage\.safetensors.*not a readable safetensors"):
        load(garbage)
    with pytest.raises(MapFileError, match="no such map file"):
        load(tmp_path / "missing.safetensors")
    foreign = write_with_header(tmp_path / "foreign.safetensors", {"hello": "world"})
    with pytest.raises(MapFileError, match="foreign.safetensors.*not an interlingua map"):
        load(foreign)

    x, y = data()
    good = tmp_path / "good.safetensors"
    build("affine").fit(x, y).save(str(good))
    header = read_header(good)
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    future = write_with_header(tmp_path / "future.safetensors", {**header, "format_version": "99"}, tensors)
    with pytest.raises(MapFileError, match="future.safetensors.*unsupported map format version '99'"):
        load(future)
    unknown = write_with_header(tmp_path / "unknown.safetensors", {**header, "kind": "warp"}, tensors)
    with pytest.raises(MapFileError, match="unknown.safetensors.*unknown map kind 'warp'"):
        load(unknown)
    wrong_shape = write_with_header(tmp_path / "shape.safetensors", {**header, "d_src": "13"}, tensors)
    with pytest.raises(MapFileError, match=r"shape.safetensors.*shape \(10, 12\), expected \(10, 13\)"):
        load(wrong_shape)
    missing = write_with_header(tmp_path / "missing_t.safetensors", header, {"weight": tensors["weight"]})
    with pytest.raises(MapFileError, match="missing_t.safetensors.*needs tensors"):
        load(missing)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(MapFileError, match="truncated.safetensors"):
        load(truncated)


def test_a_readout_round_trips_and_a_half_one_is_refused(tmp_path: Path) -> None:
    x, y = data()
    m = build("linear").fit(x, y)
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(10, 12, generator=g), torch.randn(10, generator=g)
    m.set_readout(weight, bias)
    torch.testing.assert_close(m.read_tokens(x), x @ weight.T + bias)  # an independent affine computation
    path = tmp_path / "with_readout.safetensors"
    m.save(str(path))
    loaded = load(path)[0]
    assert loaded.readout is not None and all(
        torch.equal(a, b) for a, b in zip(loaded.readout, (weight, bias), strict=True)
    )
    assert set(loaded.tensors or {}) == set(m.tensors or {})  # the readout is not part of the map itself
    with pytest.raises(ValueError, match=r"needs weight \(10, 12\) and bias \(10,\)"):
        m.set_readout(weight.T, bias)
    with pytest.raises(ValueError, match="has no readout"):
        build("linear").fit(x, y).read_tokens(x)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del tensors["readout.bias"]
    half = write_with_header(tmp_path / "half.safetensors", read_header(path), tensors)
    with pytest.raises(MapFileError, match="half.safetensors.*readout needs both"):
        load(half)
