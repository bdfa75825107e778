# Build: docker build -t izwi .
# Run:   docker run --rm -it --network host -v izwi-models:/app/models/cache \
#          -e IZWI_SIP_ADVERTISE=<this host's address> izwi
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/izwi /usr/local/bin/izwi
COPY models/manifest.toml /app/models/manifest.toml
COPY dialplans /app/dialplans
# SIP (UDP and TCP) and the RTP port range (see sip.rtp_port_min/max).
EXPOSE 5060/udp 5060/tcp 20000-20999/udp
# Models are fetched (and verified) on first start into the volume.
CMD ["sh", "-c", "izwi models fetch && exec izwi serve"]
