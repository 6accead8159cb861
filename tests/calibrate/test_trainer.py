"""Maps trained through the target model (``distill``): init, training, frozen target, determinism, a planted oracle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from aligners import Distill, build, load
from aligners.modules import MapModule
from calibrate.cli import main
from calibrate.probes import make_probes, sentence_cut
from calibrate.sources import Item
from calibrate.trainer import Through, TrainConfig, make_optimizer, topk_kl
from service.runtime.encode import Encoded, encode
from service.runtime.loading import LoadedModel, fingerprint, start_token
from service.runtime.snap import toward_vocabulary
from tests.tiny import corpus, make_model, make_tokenizer, rotated_copy


def _pairs(n: int = 300, d_src: int = 24, d_tgt: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_src, generator=g)
    y = x @ torch.randn(d_src, d_tgt, generator=g) + 0.1 * torch.randn(n, d_tgt, generator=g) + 2.0
    return x, y


@pytest.mark.parametrize(("init", "reference"), [("linear", "linear"), ("affine", "affine")])
@pytest.mark.parametrize("hidden", [0, 16])
def test_untrained_map_equals_its_least_squares_init(init: str, reference: str, hidden: int) -> None:
    x, y = _pairs()
    ours = build("distill", init=init, hidden=hidden, lam=0.1).fit(x, y)
    ref = build(reference, lam=0.1).fit(x, y)
    x_new = torch.randn(7, x.shape[1])
    torch.testing.assert_close(ours.transform(x_new), ref.transform(x_new), rtol=1e-5, atol=1e-5)


def test_trained_map_with_mlp_round_trips_through_its_file(tmp_path: Path) -> None:
    x, y = _pairs()
    aligner = build("distill", hidden=16, lam=0.1).fit(x, y)
    assert isinstance(aligner, Distill)
    module = aligner.module()
    assert module.mlp_out is not None
    with torch.no_grad():
        module.mlp_out.weight.normal_()  # a trained residual: the map is no longer affine
    aligner.set_module(module, {"train_steps": 5.0})
    path = tmp_path / "m.safetensors"
    aligner.save(str(path), {"source": "a"})
    loaded, meta = load(path)
    assert isinstance(loaded, Distill) and loaded.hidden == 16 and meta["source"] == "a"
    assert loaded.fit_info["train_steps"] == 5.0
    torch.testing.assert_close(loaded.transform(x[:5]), aligner.transform(x[:5]))
    assert not torch.allclose(aligner.transform(x[:5]), build("linear", lam=0.1).fit(x, y).transform(x[:5]))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="init"):
        build("distill", init="procrustes")
    with pytest.raises(ValueError, match="hidden"):
        build("distill", hidden=-1)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="anchor"):
        TrainConfig(anchor=-1.0)
    for ema in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema"):
            TrainConfig(ema=ema)
    for backoff in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"backoff must be in \(0, 1\]"):
            TrainConfig(backoff=backoff)


def test_cli_refuses_a_negative_anchor_before_loading_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--source", "no-such-model", "--target", "no-such-model", "--anchor", "-0.5"]) == 2
    assert "--anchor must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "eval"])
def test_cli_refuses_snap_weights_outside_0_1_before_loading_models(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--source", "no-such-model", "--target", "no-such-model"] if command == "fit" else ["--maps", "none"]
    assert main([command, *args, "--snap", "0,2"]) == 2
    assert "--snap takes comma-separated weights in [0, 1] (e.g. 0,0.5,1), got '0,2'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1", "-0.1", "half"])
def test_cli_refuses_a_train_snap_outside_0_1_before_loading_models(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", "--source", "no-such-model", "--target", "no-such-model", "--train-snap", value]) == 2
    assert f"--train-snap takes 'auto' or a weight in [0, 1) (at 1 no gradient passes), got '{value}'" in (
        capsys.readouterr().err
    )


def test_cli_refuses_an_ema_outside_0_1_before_loading_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--source", "no-such-model", "--target", "no-such-model", "--ema", "1"]) == 2
    assert "--ema must be in [0, 1)" in capsys.readouterr().err
    assert main(["fit", "--source", "no-such-model", "--target", "no-such-model", "--backoff", "0"]) == 2
    assert "--backoff must be in (0, 1]" in capsys.readouterr().err


def test_topk_kl_is_zero_for_equal_distributions_and_positive_otherwise() -> None:
    logits = torch.randn(3, 50)
    lp = torch.log_softmax(logits, dim=-1)
    top = lp.topk(8, dim=-1)
    assert float(topk_kl(top.values, top.indices, lp).abs().max()) < 1e-5
    other = torch.log_softmax(logits + torch.randn(3, 50), dim=-1)
    assert float(topk_kl(top.values, top.indices, other).min()) > 0


# --- training through a tiny target ---------------------------------------------------------------------------------


def _items(n: int = 40) -> list[Item]:
    texts = [" ".join(corpus(3, seed=i)) for i in range(n)]
    return [Item(str(i), t) for i, t in enumerate(texts)]


def _through(target: LoadedModel, items: list[Item], **config: float) -> Through:
    probes = make_probes(target, items, ["continuation", "repeat"], max_tokens=12)
    held = set(range(len(items) - 8, len(items)))
    cfg = TrainConfig(**{"lr": 3e-3, "batch_size": 4, "eval_every": 10, "heldout_probes": 12, **config})  # type: ignore[arg-type]
    return Through.build(target, [it.context for it in items], probes, held, cfg, None)


@pytest.fixture(scope="module")
def tiny_setup(tiny: dict[str, LoadedModel]) -> tuple[LoadedModel, LoadedModel, list[Encoded], Through, Distill]:
    source, target = tiny["llama"], tiny["gemma3"]
    items = _items()
    encoded = encode(source, [it.context for it in items], [2])
    through = _through(target, items, max_epochs=1.0)
    x = torch.cat([e.states[2] for e in encoded])
    y = torch.cat([e.states[0] for e in encode(target, [it.context for it in items], [0])])
    # Unpaired rows of equal count stand in for paired states: the init only has to be some least-squares map.
    n = min(len(x), len(y))
    init = build("distill", lam=1.0).fit(x[:n], y[:n])
    assert isinstance(init, Distill)
    return source, target, encoded, through, init


def _copy_of(init: Distill) -> Distill:
    """A fresh map holding ``init``'s least-squares start, for a test to train without touching the fixture's."""
    aligner = Distill(lam=1.0)
    aligner.set_state(dict(init.tensors or {}), init.d_src, init.d_tgt)
    return aligner


def test_one_training_step_lowers_the_loss(tiny_setup: tuple) -> None:
    _, target, encoded, through, init = tiny_setup
    module = init.module().to(target.stack.device)
    batch = through.train_idx[:4]
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    before, _ = through.loss(module, encoded, 2, 0, batch, grad=True)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after, _ = through.loss(module, encoded, 2, 0, batch, grad=False)
    assert float(after) < float(before.detach())


def test_training_leaves_the_target_bit_identical_and_is_seeded(tiny_setup: tuple) -> None:
    _, target, encoded, through, init = tiny_setup
    weights = {k: v.clone() for k, v in target.model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in target.model.named_parameters()}
    runs = []
    for _ in range(2):
        aligner = _copy_of(init)
        report = through.train(aligner, encoded, 2, 1)
        runs.append((aligner.tensors, report))
    for k, v in target.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert {k: p.requires_grad for k, p in target.model.named_parameters()} == flags
    (t1, r1), (t2, r2) = runs
    assert r1["steps"] == r2["steps"] > 0
    if target.stack.device.type == "cpu":
        assert all(torch.equal(t1[k], t2[k]) for k in t1)  # type: ignore[index]
    else:  # CUDA's backward kernels add in no fixed order: seeded, but equal only to rounding
        for k in t1:
            torch.testing.assert_close(t1[k], t2[k], rtol=1e-4, atol=1e-6)
    assert r1["heldout_kl"] <= r1["curve"][0]["heldout_kl"]  # the best held-out state is kept, never a worse one
    assert target.fingerprint == fingerprint(target.model)


def test_auto_step_sizes_train_through_the_target_with_several_probes_per_passage(tiny_setup: tuple) -> None:
    _, target, encoded, _, init = tiny_setup
    items = _items()
    probes = make_probes(target, items, ["continuation", "repeat"], max_tokens=12, per_passage=2)
    assert len(probes) > len(items)  # probe indices run past the passages' (the scale sample takes passages)
    cfg = TrainConfig(batch_size=4, eval_every=10, heldout_probes=12, max_epochs=1.0)  # lr=None: auto
    through = Through.build(target, [it.context for it in items], probes, set(range(32, 40)), cfg, None)
    aligner = _copy_of(init)
    report = through.train(aligner, encoded, 2, 0)
    assert report["steps"] > 0 and report["heldout_kl"] < report["curve"][0]["heldout_kl"]
    assert through.score(aligner, encoded, 2, 0) == pytest.approx(report["heldout_kl"], rel=1e-4)  # saved unscaled


def test_training_through_a_snap_trains_and_keeps_the_map_as_served(tiny_setup: tuple) -> None:
    _, target, encoded, through, init = tiny_setup
    vocabulary = through.vocabulary()
    assert vocabulary.tolist() == sorted({i for text in through.texts for i in target.tokenize(text)[0]})
    snapped, plain = _copy_of(init), _copy_of(init)
    report = through.train(snapped, encoded, 2, 0, snap=0.5)
    through.train(plain, encoded, 2, 0)
    assert report["steps"] > 0 and report["heldout_kl"] <= report["curve"][0]["heldout_kl"]
    assert snapped.fit_info["train_snap"] == 0.5 and plain.fit_info["train_snap"] == 0.0
    assert not torch.equal(snapped.module().weight, plain.module().weight)  # the snap changed what was learnt

    def as_served(x: torch.Tensor) -> torch.Tensor:
        return toward_vocabulary(target, snapped.transform(x), 0.5, vocabulary)

    # The kept held-out KL is the installed map's as served with the snap it was trained through.
    assert through.held_kl(as_served, encoded, 2, 0) == pytest.approx(report["heldout_kl"], rel=1e-4)
    with pytest.raises(ValueError, match=r"in \[0, 1\) \(at 1 no gradient passes\), got 1.0"):
        through.train(_copy_of(init), encoded, 2, 0, snap=1.0)


def test_anchor_keeps_the_trained_map_nearer_its_least_squares_start(tiny_setup: tuple) -> None:
    _, _, encoded, through, init = tiny_setup
    moved = {}
    for anchor in (0.0, 100.0):
        aligner = _copy_of(init)
        report = replace(through, config=replace(through.config, anchor=anchor)).train(aligner, encoded, 2, 0)
        assert report["steps"] > 0
        start, trained = init.module().weight, aligner.module().weight
        moved[anchor] = float((trained - start).norm() / start.norm())
    assert moved[0.0] > 0.0
    assert moved[100.0] < moved[0.0] / 2


def test_ema_installs_the_moving_average_not_the_last_step(tiny_setup: tuple) -> None:
    _, _, encoded, through, init = tiny_setup
    moved = {}
    for ema in (0.0, 0.5, 0.999999):  # a decay this near 1 keeps the average at the start for a short run
        aligner = _copy_of(init)
        report = replace(through, config=replace(through.config, ema=ema)).train(aligner, encoded, 2, 0)
        assert report["steps"] > 0
        assert through.score(aligner, encoded, 2, 0) == pytest.approx(report["heldout_kl"], rel=1e-4)
        start, trained = init.module().weight, aligner.module().weight
        moved[ema] = float((trained - start).norm() / start.norm())
    assert moved[0.0] > 0.0 and moved[0.5] > 0.0
    assert moved[0.999999] < moved[0.0] / 100


def test_planted_rotation_is_recovered_from_a_distorted_start() -> None:
    """B is A with its hidden space rotated by Q (same tokens, identical logits), so mapping A's states by Q hands
    over perfectly (KL 0). Started from a distorted Q, training through B must recover most of native behaviour."""
    tok = make_tokenizer(400)
    a = make_model("llama", len(tok), layers=4)
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(5)))
    b = rotated_copy(a, q)
    source = LoadedModel("a", "a", a, tok, fingerprint(a), start_token(tok))
    target = LoadedModel("b", "b", b, tok, fingerprint(b), start_token(tok))
    items = _items(60)
    encoded = encode(source, [it.context for it in items], [0])
    through = _through(target, items, max_epochs=5.0, patience=3)
    exact = Distill(lam=0.0)
    exact.set_state({"weight": q.T.contiguous(), "bias": torch.zeros(128)}, 128, 128)
    assert through.score(exact, encoded, 0, 0) < 1e-5  # the oracle: a perfect map loses nothing
    noise = torch.randn(128, 128, generator=torch.Generator().manual_seed(6)) * 0.3 / 128**0.5
    distorted = Distill(lam=0.0)
    distorted.set_state({"weight": (q.T + noise).contiguous(), "bias": torch.zeros(128)}, 128, 128)
    start = through.score(distorted, encoded, 0, 0)
    through.train(distorted, encoded, 0, 0)
    end = through.score(distorted, encoded, 0, 0)
    assert start > 0.03
    assert end < start / 3, (start, end)


def test_no_probes_and_untrainable_requests_get_clear_errors(tiny: dict[str, LoadedModel]) -> None:
    target = tiny["gemma3"]
    with pytest.raises(ValueError, match="probe kinds"):
        make_probes(target, _items(4), [])
    one_sentence = [Item(str(i), "no sentence end here") for i in range(4)]
    probes = make_probes(target, one_sentence, ["continuation"])
    assert probes == [] and sentence_cut("no sentence end here") is None
    with pytest.raises(ValueError, match="no probes"):
        Through.build(target, [it.context for it in one_sentence], probes, {0}, TrainConfig(), None)
    with pytest.raises(ValueError, match="both sides"):
        items = _items(4)
        Through.build(
            target, [it.context for it in items], make_probes(target, items, ["repeat"]), set(), TrainConfig(), None
        )


def test_map_module_starts_as_its_affine_part() -> None:
    weight, bias = torch.randn(5, 7), torch.randn(5)
    module = MapModule(weight, bias, hidden=9)
    x = torch.randn(3, 7) * 50
    torch.testing.assert_close(module(x), x @ weight.T + bias)


@pytest.mark.slow
def test_cli_trains_distill_maps_ranks_by_proxy_and_reports_curves(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "maps"
    args = ["fit", "--source", str(tiny_dirs["llama"]), "--target", str(tiny_dirs["gemma3"]), "--samples", "24"]
    args += ["--eval-samples", "8", "--layers", "1-2", "--target-layers", "0,1,2", "--methods", "linear,distill"]
    args += ["--directions", "forward", "--out", str(out), "--cache", str(tmp_path / "cache"), "--train-epochs", "1"]
    args += ["--sampled", "0"]
    assert main([*args, "--proxy-probes", "8", "--train-snap", "auto", "--proxy-data", "none"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    trained = [e for e in manifest["maps"] if e["method"] == "distill"]
    # Trained: the best start into the embeddings (layer 0) and the best into a deeper layer (1 or 2), by proxy KL.
    assert sorted(e["target_layer"] == 0 for e in trained) == [False, True]
    starts = {  # training starts from the map as fitted: ranked by its KL without a snap
        (e["source_layer"], e["target_layer"]): e["metrics"].get("proxy_no_snap", e["metrics"]["kl"])
        for e in manifest["maps"]
        if e["method"] == "linear"
    }
    for e in trained:
        rivals = [kl for (ls, lt), kl in starts.items() if (lt == 0) == (e["target_layer"] == 0)]
        assert e["metrics"]["init_proxy"] == pytest.approx(min(rivals), rel=1e-4)
    assert all(("kl" in e["metrics"]) != bool(e.get("helper")) for e in manifest["maps"])
    assert manifest["defaults"]["llama__gemma3"]["by"] == "proxy"
    assert all(e["metrics"]["proxy"] == e["metrics"]["kl"] for e in manifest["maps"] if not e.get("helper"))
    assert (out / "learning-curves.png").stat().st_size > 0
    aligner, meta = load(out / trained[0]["path"])
    assert aligner.kind == "distill" and meta["train"]["steps"] >= 1 and "init_proxy" in meta["metrics"]
    # Maps into the embeddings, and deeper maps that carry a readout into them (a trained map whose source layer the
    # trained map into the embeddings reads too), carry the snap weight with the lowest proxy KL among the candidates
    # (0 among them: never worse than none); the runtime reads it from the file.
    (into_embeddings,) = [e for e in trained if e["target_layer"] == 0]
    for e in manifest["maps"]:
        readout = load(out / e["path"])[0].readout is not None
        carries = e in trained and e["target_layer"] != 0 and e["source_layer"] == into_embeddings["source_layer"]
        assert readout == carries
        if (e["target_layer"] != 0 and not readout) or e.get("helper"):
            assert "snap" not in e["metrics"]
            continue
        m = e["metrics"]
        assert m["snap"] in (0.0, 0.25, 0.5, 0.75, 1.0) and m["kl"] <= m["proxy_no_snap"]
        assert load(out / e["path"])[0].fit_info["snap"] == m["snap"]
    # Trained into the embeddings through the snap its least-squares start chose (below 1: else unsnapped).
    start = next(
        e["metrics"]["snap"]
        for e in manifest["maps"]
        if e["method"] == "linear" and (e["source_layer"], e["target_layer"]) == (into_embeddings["source_layer"], 0)
    )
    assert load(out / into_embeddings["path"])[0].fit_info["train_snap"] == (start if start < 1 else 0.0)
    assert main([*args, "--train-batch", "0"]) == 2


@pytest.mark.slow
def test_maps_from_concatenated_source_layers_fit_train_evaluate_and_serve(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from aligners.store import MapStore
    from service.api.planner import RequestPlanner
    from service.api.schemas import TranslateRequest
    from service.api.state import ServiceState
    from service.settings import Settings

    out = tmp_path / "maps"
    args = ["fit", "--source", str(tiny_dirs["llama"]), "--target", str(tiny_dirs["gemma3"]), "--samples", "24"]
    args += ["--eval-samples", "8", "--layers", "2,0+2", "--target-layers", "0", "--methods", "linear,distill"]
    args += ["--directions", "forward", "--out", str(out), "--cache", str(tmp_path / "cache"), "--train-epochs", "1"]
    assert main([*args, "--sampled", "0", "--proxy-probes", "8", "--train-top", "2"]) == 0
    entries = {(tuple(e.get("source_layers", [e["source_layer"]])), e["method"]): e for e in MapStore(out).entries()}
    assert set(entries) == {((2,), "linear"), ((0, 2), "linear"), ((2,), "distill"), ((0, 2), "distill")}
    concat = entries[((0, 2), "distill")]
    assert concat["path"] == "llama__gemma3/L0+2-L0/distill.safetensors" and concat["source_layer"] == 2
    aligner, meta = load(out / concat["path"])
    assert (aligner.d_src, aligner.d_tgt) == (256, 128) and meta["source_layers"] == [0, 2]
    assert meta["train"]["steps"] >= 1
    assert "L0+2->L0" in (out / "fit-report.md").read_text()

    report = tmp_path / "eval"
    argv = ["eval", "--maps", str(out), "--samples", "3", "--max-new-tokens", "3", "--modes", "embeds"]
    assert main([*argv, "--cache", str(tmp_path / "cache"), "--out", str(report)]) == 0
    (result,) = json.loads((report / "eval-report.json").read_text())
    best = min(
        (e for e in entries.values() if e["method"] == "distill"), key=lambda e: e["metrics"]["kl"]
    )  # eval uses each method's lowest proxy KL, as the server does
    (row,) = [r for r in result["translated"] if r["method"] == "distill"]
    assert row["layers"] == ("L0+2->L0" if best is concat else "L2->L0")

    models = f"llama={tiny_dirs['llama']},gemma3={tiny_dirs['gemma3']}"
    state = ServiceState(Settings(models=models, maps=out, prepare_maps=False))
    state.load()
    assert state.status == "ready", state.detail
    resolved = RequestPlanner(state).resolve("llama", "gemma3", None, 0, "distill")
    want = [0, 2] if best is concat else None
    assert resolved.source_layers == want
    req = TranslateRequest(source="llama", target="gemma3", text="the mill of Varn", method="distill", layer=0)
    response = RequestPlanner(state).translate(req, resolved)
    assert response.source_layer == 2 and response.source_layers == want
    assert response.shape[1] == 128
    assert response.snap == best["metrics"]["snap"]  # the fitted map's pull toward Gemma's rows, applied by /translate


def test_native_answers_are_cached_per_target_and_items(tiny: dict[str, LoadedModel], tmp_path: Path) -> None:
    from calibrate.probes import native_answers

    target = tiny["gemma3"]
    items = [Item(str(i), t, question="Who built the mill?", answers=["x"]) for i, t in enumerate(corpus(3, seed=5))]
    first = native_answers(target, items, max_new_tokens=4, cache=tmp_path)
    assert first == native_answers(target, items, max_new_tokens=4)  # the same as computed afresh
    (path,) = (tmp_path / "answers").glob("*.json")
    path.write_text(json.dumps(["from the cache"] * len(items)))
    assert native_answers(target, items, max_new_tokens=4, cache=tmp_path) == ["from the cache"] * len(items)
    other = [Item("o", "another passage.", question="Who?", answers=["x"])]
    native_answers(target, other, max_new_tokens=4, cache=tmp_path)
    assert len(list((tmp_path / "answers").glob("*.json"))) == 2  # other items: another entry


@pytest.mark.parametrize("hidden", [0, 16])
def test_auto_step_sizes_make_training_invariant_to_the_scale_of_the_states(hidden: int) -> None:
    """The same problem with the source's input dimensions rescaled each its own way (one 1000x, as hidden states'
    outlier dimensions run) and the target's states 50x smaller, the map rescaled to match, trains to the same
    outputs, rescaled; one step size for every parameter does not."""
    gen = torch.Generator().manual_seed(0)
    x, want = torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen)
    w, b = torch.randn(4, 8, generator=gen) * 0.3, torch.randn(4, generator=gen) * 0.1
    c = torch.tensor([1e3, 1.0, 3.0, 0.1, 1.0, 20.0, 1.0, 1.0])  # per input dimension
    k = 0.02

    def train(c: torch.Tensor, k: float, lr: float | None) -> torch.Tensor:
        module = MapModule(w * k / c, b * k, hidden)
        opt = make_optimizer(module, x * c, TrainConfig(lr=lr))
        for _ in range(5):
            loss = (module(x * c) / k - want).square().mean()  # like the KL: no matter the target's scale
            opt.zero_grad()
            loss.backward()
            opt.step()
        return module(x * c).detach() / k

    if hidden == 0:  # the residual MLP reads x / rms(x): rescaling single dimensions changes what it sees
        torch.testing.assert_close(train(c, k, None), train(torch.ones(8), 1.0, None), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(train(c * 0 + 1e3, k, None), train(torch.ones(8), 1.0, None), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(train(c, k, 2e-3), train(torch.ones(8), 1.0, 2e-3), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("rows", [False, True])
def test_a_preconditioned_module_is_the_same_map_and_saves_unscaled(rows: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    module = MapModule(torch.randn(4, 8, generator=gen), torch.randn(4, generator=gen), hidden=16)
    x = torch.randn(5, 8, generator=gen) * torch.tensor([900.0, 1, 1, 1, 2, 1, 1, 1])
    before, saved = module(x).detach(), module.tensors()
    module.precondition(x.square().mean(dim=0).sqrt(), torch.tensor([300.0, 1, 0.01, 2]) if rows else None)
    torch.testing.assert_close(module(x).detach(), before, rtol=1e-5, atol=1e-4)
    for name in ("weight", "bias"):
        torch.testing.assert_close(module.tensors()[name], saved[name])


def test_row_steps_make_training_invariant_to_the_scale_of_each_output_dimension() -> None:
    """Target dimensions of very different sizes (one 300x the others, as a few dimensions of a model's states run),
    each scored relative to its size: with step sizes per output dimension the map trains to the same outputs,
    rescaled, as with all dimensions alike; with one step size per tensor it does not."""
    gen = torch.Generator().manual_seed(0)
    x, want = torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen)
    w, b = torch.randn(4, 8, generator=gen) * 0.3, torch.randn(4, generator=gen) * 0.1
    k = torch.tensor([300.0, 1.0, 0.05, 2.0])  # per output dimension

    def train(k: torch.Tensor, rows: bool) -> torch.Tensor:
        module = MapModule(w * k[:, None], b * k)
        opt = make_optimizer(module, x, TrainConfig(row_steps=rows))
        for _ in range(5):
            loss = (module(x) / k - want).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return module(x).detach() / k

    ones = torch.ones(4)
    torch.testing.assert_close(train(k, True), train(ones, True), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(train(k, False), train(ones, False), rtol=1e-2, atol=1e-3)


def test_the_held_out_score_given_picks_the_state_kept_and_when_to_stop(tiny_setup: tuple) -> None:
    """Judged by another score (a score that worsens with every call; the KL of only the first held-out probe),
    training keeps the state that score ranks best: the start where nothing beats it."""
    _, _, encoded, through, init = tiny_setup
    calls: list[float] = []

    def worsening(fn: Any) -> float:
        calls.append(float(len(calls)))
        return calls[-1]

    aligner = _copy_of(init)
    report = through.train(aligner, encoded, 2, 1, held_out=worsening)
    assert [c["heldout_kl"] for c in report["curve"]] == calls and report["best_step"] == 0
    assert all(torch.equal(aligner.tensors[k], init.tensors[k]) for k in init.tensors)  # type: ignore[index]
    first = [through.held_idx[0]]
    trained = _copy_of(init)
    report = through.train(trained, encoded, 2, 1, held_out=lambda fn: through.loss(fn, encoded, 2, 1, first, False)[1])
    assert report["heldout_kl"] <= report["curve"][0]["heldout_kl"]
    assert report["heldout_kl"] == pytest.approx(through.loss(trained.transform, encoded, 2, 1, first, False)[1], 1e-4)


@pytest.mark.parametrize("backoff", [0.5, 1.0])
def test_a_worse_evaluation_sends_training_back_to_the_best_state_with_smaller_steps(
    tiny_setup: tuple, backoff: float
) -> None:
    """Adam's first step after its moments are reset moves every weight by exactly its step size (the sign of its
    gradient), so with an evaluation after every step that only worsens, the map scored at evaluation k is the start
    moved by at most lr · backoff^(k-1) per weight: each evaluation sends training back to the start with half the step
    size. With backoff 1 training goes on from where it is: by the second step it is further than one step size."""
    _, _, encoded, through, init = tiny_setup
    lr = 1e-3
    config = replace(through.config, lr=lr, eval_every=1, patience=3, backoff=backoff, anchor=0.0)
    seen: list[torch.Tensor] = []

    def worsening(fn: Any) -> float:
        seen.append(fn.weight.detach().clone())
        return float(len(seen))

    aligner = _copy_of(init)
    report = replace(through, config=config).train(aligner, encoded, 2, 1, held_out=worsening)
    assert report["steps"] == 3 and report["best_step"] == 0 and len(seen) == 4
    moved = [float((w - seen[0]).abs().max()) for w in seen[1:]]
    assert moved[0] == pytest.approx(lr, rel=1e-2)
    if backoff < 1:
        assert moved[1:] == pytest.approx([lr * backoff, lr * backoff**2], rel=1e-2)
    else:
        assert moved[1] > 1.5 * lr
    assert all(torch.equal(aligner.tensors[k], init.tensors[k]) for k in init.tensors)  # type: ignore[index]
