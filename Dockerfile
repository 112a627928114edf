# hsmpool: the AWS KMS wire protocol on a pool of PKCS#11 tokens (SoftHSM2 in this image).
#   docker build -t hsmpool .
#   docker run -p 8080:8080 -v hsmpool-data:/data hsmpool
# First start: three SoftHSM2 tokens, /data/hsmpool.toml and an admin credential
# (/data/credentials.json, printed once) are made in the /data volume; later starts reuse them.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      softhsm2 libssl-dev libp11-kit-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/hsmpool
COPY pyproject.toml setup.py README.md ./
COPY native ./native
COPY hsmpool ./hsmpool
COPY kms ./kms
COPY softhsm-config ./softhsm-config
COPY docker/entrypoint.sh /usr/local/bin/hsmpool-entrypoint
RUN pip install --no-cache-dir . \
 && chmod 755 /usr/local/bin/hsmpool-entrypoint \
 && useradd --system --home-dir /data --shell /usr/sbin/nologin hsmpool \
 && mkdir -p /data && chown hsmpool:hsmpool /data

USER hsmpool
ENV HSMPOOL_CONFIG=/data/hsmpool.toml \
    HSMPOOL_CACHE_DIR=/data/cache \
    HSMPOOL_TOKENS=3
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["hsmpool-entrypoint"]
CMD ["hsmpool", "serve", "--host", "0.0.0.0", "--port", "8080"]
