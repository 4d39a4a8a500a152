# voxgate: build on Debian, run on Debian slim with espeak-ng for "say text" and PocketSphinx
# (with its US English model) for "listen". PocketSphinx is loaded at run time, so the build
# needs no -dev package; without it the gateway still runs and listen steps fall back to keys.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ca-certificates \
    libpocketsphinx3 pocketsphinx-en-us \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/voxgate
COPY --from=build /src/target/release/voxgate /usr/local/bin/voxgate
COPY sip-config ./sip-config
RUN mkdir -p recordings data
# SIP (UDP+TCP), HTTP API, RTP range. Set sip.listen / http.listen to 0.0.0.0 in your config.
EXPOSE 5060/udp 5060/tcp 8080/tcp 20000-29999/udp
ENTRYPOINT ["voxgate"]
CMD ["--config", "sip-config/gateway.toml"]
