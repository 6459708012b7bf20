# trialbridge: FHIR R4 ingest and trial events. Build: docker build -t trialbridge .
# One exact Python release in both stages (the oldest minor pyproject.toml supports), and the
# dependencies exactly as requirements.lock pins and hashes them (README, "Dependency notes").
FROM python:3.11.15-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY api ./api
COPY service ./service
COPY fhir_mapping ./fhir_mapping
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.15-slim-bookworm
RUN groupadd --gid 10001 trialbridge \
    && useradd --create-home --uid 10001 --gid 10001 trialbridge
# The locked dependencies first (a layer that changes only with the lock), then the service's own
# wheel without resolving anything; `pip check` fails the build if the lock misses a requirement.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels && pip check
USER 10001:10001
WORKDIR /home/trialbridge
# MPLCONFIGDIR is under /tmp so that a read-only root filesystem needs one writable mount for it
# (deploy/ mounts a tmpfs there; the font cache built below is then rebuilt once, in a second).
ENV DATABASE_URL=sqlite:////home/trialbridge/var/trialbridge.db \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1
# The SQLite folder, owned by the service's user (a volume mounted there inherits that), and
# matplotlib's font cache, built once here rather than on the first figure request
RUN mkdir -p /home/trialbridge/var && python -c "import matplotlib.font_manager"
VOLUME ["/home/trialbridge/var"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["trialbridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
