# syntax=docker/dockerfile:1
# Build: docker build -t token-exchange .
# Run:   docker run -p 8080:8080 -v "$PWD/deploy-config:/etc/token-exchange:ro" \
#          -e PERMISSIONS_API_TOKEN=... token-exchange
# The config (config.toml) and the key directory are mounted, never baked into the image.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY token_exchange ./token_exchange
# token_exchange/spa and token_exchange/js link to the example SPA (`dev` serves it) and to the
# JavaScript client (served at /js/).
COPY examples/spa ./examples/spa
COPY clients/js ./clients/js
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Only wheels reach this stage: no compilers, no sources, no pip cache.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin token-exchange \
    && install -d -o 10001 -g 10001 /var/lib/token-exchange
# A place for the SQLite store (README: Container), for a volume mounted there.
USER 10001:10001
ENV TOKEN_EXCHANGE_CONFIG=/etc/token-exchange/config.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["token-exchange"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
