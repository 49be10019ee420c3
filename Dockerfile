# gpupool-operator image: one statically linked binary on an empty base. No shell, no package
# manager, no libc to patch; runs as a non-root UID. Nothing is pulled: there is no base image.
#
# Build the binary first (static glibc; rustup needs no extra target):
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --target x86_64-unknown-linux-gnu --bin gpupool-operator
# then the image, with any builder (hack/build-image.sh does both with buildah and checks the result):
#   buildah bud -t ghcr.io/<you>/gpupool-operator:0.1.0 .      # or: docker build -t ... .
#
# .dockerignore keeps the build context to that one binary.
FROM scratch

ARG BINARY=target/x86_64-unknown-linux-gnu/release/gpupool-operator

LABEL org.opencontainers.image.title="gpupool-operator" \
      org.opencontainers.image.description="Kubernetes operator that makes GPU node pools ready to run GPU work" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gpupool/gpupool"

# Owned by root (COPY's default), mode 0755 from cargo: the non-root user cannot modify it.
COPY ${BINARY} /gpupool-operator

# The conventional "nonroot" UID/GID of distroless images; numeric, so no /etc/passwd is needed
# and Kubernetes can verify runAsNonRoot.
USER 65532:65532

# /metrics, /healthz, /readyz (--metrics-addr)
EXPOSE 8080

ENTRYPOINT ["/gpupool-operator"]
CMD ["run"]
