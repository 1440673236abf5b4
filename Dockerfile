# The gateway image: the same package and entry point `make test` exercises (`gateway serve`), run as non-root.
# Build: make docker. Run: docker run -p 8000:8000 -e REDIS_URL=redis://redis:6379/0 \
#   -v $PWD/policies.yaml:/etc/gateway/policies.yaml:ro resilience-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY upstream_app ./upstream_app
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# The user's one writable place: the data dir, where a relative audit.dir (default data/audit) resolves.
RUN useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /var/lib/gateway/data/audit /etc/gateway \
    && chown -R 10001 /var/lib/gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY policies.yaml /etc/gateway/policies.yaml
WORKDIR /var/lib/gateway
USER 10001
ENV PYTHONUNBUFFERED=1 GATEWAY_DATA_DIR=/var/lib/gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/ops/health', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "serve"]
CMD ["--policy", "/etc/gateway/policies.yaml", "--host", "0.0.0.0", "--port", "8000"]
