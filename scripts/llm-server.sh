#!/usr/bin/env bash
# An OpenAI-compatible language-model server from PyPI for the remote-engine
# tests: llama-cpp-python's server, compiled once (10-25 minutes on 2 cores)
# into a venv in a per-user cache keyed by its version, so reruns skip it.
# Prints the venv's python on stdout.
set -euo pipefail
VERSION=0.3.36
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/izwi/llama-cpp-python-$VERSION-portable"
mkdir -p "$(dirname "$CACHE")"
# One build at a time (test binaries may ask at once).
exec 9>"$CACHE.lock"
flock 9
if [ ! -f "$CACHE/.installed" ]; then
    rm -rf "$CACHE"
    python3 -m venv "$CACHE" >&2
    # ggml's portable x86-64 build (AVX2 at most), without BLAS or a GPU;
    # llama.cpp's examples and tests are not needed. Not GGML_NATIVE: a
    # cache folder can outlive the machine that built it, and this
    # version's AMX kernels stopped with SIGILL ("tilezero") on a Xeon that
    # has AMX. The 135M test model does not need the speed.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$CACHE/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "llama-cpp-python[server]==$VERSION" >&2
    touch "$CACHE/.installed"
fi
echo "$CACHE/bin/python"
