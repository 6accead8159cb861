"""Files made once from a model and kept: where they live (``cache_home``), GGUF files converted to safetensors
folders (``convert_gguf``), and the one way a model folder is written where several processes may write it at once
(``publish_model_folder``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def cache_home() -> Path:
    """Where converted models (and other derived files) live: $INTERLINGUA_HOME or ~/.cache/interlingua."""
    return Path(os.environ.get("INTERLINGUA_HOME", Path.home() / ".cache" / "interlingua"))


def convert_gguf(path: Path) -> Path:
    """Convert a GGUF file to a safetensors folder once; later calls return the cached folder.

    transformers dequantises GGUF weights on load but refuses to ``save_pretrained`` such a model, so the weights are
    copied into a model rebuilt from the same config, which saves normally (identical logits).
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_home() / "converted" / f"{path.stem}-{key}"
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    def save(folder: Path) -> None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    return publish_model_folder(out, save)


def publish_model_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """Make the model folder ``out`` (one with a ``config.json``) by ``write`` into a temporary folder of this process's
    own beside it, renamed into place: where another process makes the same folder at the same time (two servers, a
    server and the tests), one rename wins and the other process keeps the finished folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)  # as a folder made by mkdir (mkdtemp's are private)
    write(tmp)
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out
