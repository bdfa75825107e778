# The two commands of the README: `make run` and `make test`. Each sets up what is
# missing (Debian packages, the release build, model files) and then does its job.

CARGO ?= cargo
IZWI := target/release/izwi
# The profile `make run` serves; tests always use the small one.
PROFILE ?= default

.PHONY: run test setup build models-run models-test test-tools lint fuzz clean-models

run: setup build models-run
	IZWI_MODELS_PROFILE=$(PROFILE) $(IZWI) serve

test: setup build models-test test-tools
	IZWI_MODELS_PROFILE=small $(CARGO) test --release --locked

setup:
	@scripts/setup.sh

build:
	$(CARGO) build --release --locked

models-run: build
	$(IZWI) models fetch --profile $(PROFILE)

models-test: build
	$(IZWI) models fetch --profile small
	$(IZWI) models fetch --profile default

# The tests' Python clients, pinned, in a venv of their own (PyPI only), and
# OpenAI-compatible servers in per-user caches: llama-cpp-python (compiled
# once, scripts/llm-server.sh) and speech servers (wheels only,
# scripts/speech-servers.sh).
PYTOOLS := target/pytools
test-tools: $(PYTOOLS)/.installed
	@scripts/llm-server.sh >/dev/null
	@scripts/speech-servers.sh install >/dev/null
$(PYTOOLS)/.installed: tests/python/requirements.txt
	python3 -m venv $(PYTOOLS)
	$(PYTOOLS)/bin/pip install --quiet --disable-pip-version-check --only-binary :all: -r tests/python/requirements.txt
	touch $@

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --locked -- -D warnings

# A parsing path under libFuzzer for FUZZ_SECONDS (needs `cargo install
# cargo-fuzz`; RUSTC_BOOTSTRAP lets the stable toolchain take its -Z flags).
# Targets (fuzz/fuzz_targets): sip_sdp, rtp_jitter, dtmf, twilio_frames,
# digest, tcp_framing. Seeds, where a target has them, are in fuzz/seeds/<target>.
FUZZ_SECONDS ?= 120
FUZZ_TARGET ?= sip_sdp
fuzz:
	mkdir -p fuzz/corpus/$(FUZZ_TARGET) fuzz/seeds/$(FUZZ_TARGET)
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_TARGET) -O fuzz/corpus/$(FUZZ_TARGET) fuzz/seeds/$(FUZZ_TARGET) -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096

clean-models:
	rm -rf models/cache
