# The two commands of the README: `make run` and `make test`. Each sets up what is
# missing (Debian packages, the release build, model files) and then does its job.

CARGO ?= cargo
IZWI := target/release/izwi
# The profile `make run` serves; tests always use the small one.
PROFILE ?= default

.PHONY: run test setup build models-run models-test lint clean-models

run: setup build models-run
	IZWI_MODELS_PROFILE=$(PROFILE) $(IZWI) serve

test: setup build models-test
	IZWI_MODELS_PROFILE=small $(CARGO) test --release --locked

setup:
	@scripts/setup.sh

build:
	$(CARGO) build --release --locked

models-run: build
	$(IZWI) models fetch --profile $(PROFILE)

models-test: build
	$(IZWI) models fetch --profile small

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --locked -- -D warnings

clean-models:
	rm -rf models/cache
