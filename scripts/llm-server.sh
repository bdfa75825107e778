#!/usr/bin/env bash
# An OpenAI-compatible language-model server from PyPI for the remote-engine
# tests: llama-cpp-python's server, compiled once (10-25 minutes on 2 cores)
# into a venv in a per-user cache keyed by its version, so reruns skip it.
# Prints the venv's python on stdout.
set -euo pipefail
VERSION=0.3.36
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/izwi/llama-cpp-python-$VERSION"
if [ ! -f "$CACHE/.installed" ]; then
    rm -rf "$CACHE"
    mkdir -p "$(dirname "$CACHE")"
    python3 -m venv "$CACHE" >&2
    # No BLAS, no GPU, no native-only instructions: the same build wherever
    # the cache is made; examples and tests are not needed.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$CACHE/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "llama-cpp-python[server]==$VERSION" >&2
    touch "$CACHE/.installed"
fi
echo "$CACHE/bin/python"
