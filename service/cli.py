"""``interlingua-serve`` (also ``python -m service``): run the HTTP server.

Every flag overrides the matching ``INTERLINGUA_*`` environment variable; with neither, it serves the real small
pair (smollm2, gemma3) on CPU with the maps in $INTERLINGUA_HOME/maps, fitting a small default set if there are none.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from service.settings import Settings

FLAGS = {
    "models": "alias=spec pairs, e.g. smollm2=smollm2,gemma3=gemma3 (specs: alias, folder, .gguf file, hub id)",
    "maps": "map store folder written by interlingua-calibrate",
    "backend": "decoder for every target model: transformers (every mode) or vllm (native and embeds)",
    "backends": "alias=backend pairs overriding --backend per model, e.g. gemma3=vllm",
    "encoder": "source-state encoder for every source model: transformers, or vllm (layers the served maps read)",
    "encoders": "alias=encoder pairs overriding --encoder per model, e.g. smollm2=vllm",
    "vllm_tensor_parallel_size": "GPUs vLLM shards each model it serves over",
    "vllm_gpu_memory_utilization": "share of each GPU's memory vLLM may take (0-1]",
    "vllm_max_model_len": "vLLM context length (default: the model's)",
    "vllm_enforce_eager": "true/false: skip CUDA graphs (default: only on CPU)",
    "dtype": "float32, bfloat16 or float16",
    "devices": "alias=device pairs: cpu, cuda:N, or cuda:N,M to shard one model",
    "max_text_chars": "longest text or prompt accepted (413 beyond)",
    "max_new_tokens": "most new tokens a request may ask for",
    "queue_size": "requests waiting for the model worker before 503",
    "max_batch": "generate requests decoded together",
    "api_key": "require 'Authorization: Bearer <key>'",
    "host": "bind address",
    "port": "port",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlingua-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, help_text in FLAGS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, help=f"{help_text} (env INTERLINGUA_{name.upper()})"
        )
    parser.add_argument(
        "--no-prepare-maps",
        dest="prepare_maps",
        action="store_false",
        default=None,
        help="do not fit a default map set when the store has none",
    )
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "log_level"}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        print(f"error: invalid settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from service.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        # On SIGTERM, open requests get this long before they are cancelled; the worker then stops what is left.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
