#!/usr/bin/env bash
# Installs what building and running Izwi needs on Debian 12, only what is missing.
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail

# Build: whisper.cpp and llama.cpp (cmake, C/C++ compilers), bindgen (libclang).
# Run: espeak-ng turns text into phonemes for the Piper voice (a separate program,
# never linked: it is GPL-3.0). libopus for the Opus codec.
# Tests: sipp (Debian package sip-tester), kamailio and baresip are the independent SIP peers;
# python3-venv holds the Python clients (streamdouble, a Twilio Media Streams simulator);
# iproute2 and util-linux (ip, unshare) give the attack tests network and mount namespaces;
# postgresql is the shared records database of the scale-out test (a temporary cluster);
# chromium and chromium-driver are the real browser the console's tests drive (WebDriver).
packages=(build-essential cmake clang libclang-dev pkg-config ca-certificates espeak-ng libopus-dev sip-tester kamailio baresip-core python3 python3-venv iproute2 util-linux postgresql chromium chromium-driver)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install a Rust toolchain (1.92 or newer, e.g. with rustup) and run again." >&2
  exit 1
fi
version=$(cargo --version | awk '{print $2}')
major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 92 ]; }; then
  echo "setup: cargo $version is too old; Izwi needs Rust 1.92 or newer." >&2
  exit 1
fi
