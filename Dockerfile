# syntax=docker/dockerfile:1
# backstop as a container: built with Rust, run from a distroless image that
# holds only the C runtime, as a non-root user, on a read-only root
# filesystem. The only writable place is the state volume.
#
#   docker build --build-arg BACKSTOP_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t backstop .
#   docker run --read-only -v backstop-state:/var/lib/backstop \
#     -v ./backstop.toml:/etc/backstop/backstop.toml:ro -p 9469:9469 backstop

# The rustc that agent/link-order.txt was written with: another one names the
# functions differently and the code is not ordered (bench/README.md, "Cost").
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# .git is not sent to the build (.dockerignore): the commit comes in as an argument.
ARG BACKSTOP_GIT_COMMIT=unknown
ENV BACKSTOP_GIT_COMMIT=${BACKSTOP_GIT_COMMIT}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin backstop \
 && install -D -s -m 0755 target/release/backstop /out/usr/local/bin/backstop \
 && install -d -m 0700 /out/var/lib/backstop \
 && install -d -m 0755 /out/etc/backstop

# distroless/cc: glibc, libgcc, CA certificates, no shell; :nonroot is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/backstop /usr/local/bin/backstop
COPY --from=build /out/etc/backstop /etc/backstop
# A named volume mounted here starts as this directory: owned by the agent's user.
COPY --from=build --chown=65532:65532 /out/var/lib/backstop /var/lib/backstop
USER 65532:65532
ENV BACKSTOP_CONFIG=/etc/backstop/backstop.toml
VOLUME ["/var/lib/backstop"]
EXPOSE 9469
# The agent's own liveness (its probe loops are alive), asked without curl.
# For another [agent] listen port, set BACKSTOP_HEALTHCHECK_URL.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/backstop", "healthcheck", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/backstop"]
CMD ["run", "--log-format", "json"]
