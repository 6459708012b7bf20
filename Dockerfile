# trialbridge: FHIR R4 ingest and trial events. Build: docker build -t trialbridge .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY api ./api
COPY service ./service
COPY fhir_mapping ./fhir_mapping
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 trialbridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/trialbridge
# The SQLite directory, owned by the service's user (a named volume mounted there inherits that),
# and matplotlib's font cache, built once here rather than on the first figure request
RUN mkdir -p /home/trialbridge/var && python -c "import matplotlib.font_manager"
ENV DATABASE_URL=sqlite:////home/trialbridge/var/trialbridge.db \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["trialbridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
