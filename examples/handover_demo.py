"""Hand what SmolLM2 read to Gemma 3: a quick affine map fitted on a few dozen passages, then generation.

    python examples/handover_demo.py        (after `make models`; about a minute on a 2-core CPU)

The calibration here is deliberately tiny (48 invented passages): it shows the moving parts, not the quality that a
full calibration reaches.
"""

import random

import torch

from aligners import build
from service.runtime.encode import encode
from service.runtime.generate import SamplingParams, generate
from service.runtime.handover import LayerMap, prepare
from service.runtime.loading import load_model
from service.runtime.pairing import paired_states

SOURCE_LAYER, TARGET_LAYER = 8, 4  # smollm2 block 8 -> gemma3 block 4: low target layers work best


def passages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = ["Orla Vent", "Tamsin Brede", "Halvard Quill", "Ysolde Marrow", "Penwick Dray", "Corin Aske"]
    towns = ["Varnhollow", "Oskelby", "Doravel", "Marrowgate", "Quillmere", "Brede Harbor"]
    things = ["a clock tower", "a paper mill", "a stone bridge", "a music school", "a lighthouse", "a bakery"]
    out = []
    for _ in range(n):
        name, town, thing = rng.choice(names), rng.choice(towns), rng.choice(things)
        out.append(
            f"{name} built {thing} in {town} in {rng.randint(1750, 1990)}. It was later run by {rng.choice(names)}."
        )
    return out


def main() -> None:
    source, target = load_model("smollm2", name="smollm2"), load_model("gemma3", name="gemma3")
    texts = passages(48)
    xs, ys = [], []
    for a, b in zip(encode(source, texts, [SOURCE_LAYER]), encode(target, texts, [TARGET_LAYER]), strict=True):
        x, y = paired_states(a.states[SOURCE_LAYER], a.offsets, b.states[TARGET_LAYER], b.offsets)
        xs.append(x)
        ys.append(y)
    aligner = build("affine").fit(torch.cat(xs), torch.cat(ys))
    print(
        f"fitted affine smollm2 L{SOURCE_LAYER} -> gemma3 L{TARGET_LAYER} on {aligner.fit_info['n_samples']:.0f} pairs"
    )

    context = "Ysolde Marrow built a lighthouse in Quillmere in 1874. It was later run by Corin Aske."
    question = "\nQuestion: In which year was the lighthouse built?\nAnswer:"
    params = SamplingParams(max_new_tokens=8, stop=["\n"])
    for mode in ("native", "replace"):
        maps = [] if mode == "native" else [LayerMap(SOURCE_LAYER, TARGET_LAYER, aligner)]
        handover = prepare(source, target, context, question, mode, maps)
        print(f"{mode:8s} -> {generate(target, [handover.prompt], params)[0].text!r}")


if __name__ == "__main__":
    main()
