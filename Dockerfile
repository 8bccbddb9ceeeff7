# One image for every bulkmail process: migrations, Celery worker and beat, pollers.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY bulkmail ./bulkmail
COPY workers ./workers
COPY cli ./cli
# The versions the tests passed with (constraints.txt); no extra: the demo's catcher is not here.
RUN pip install -c constraints.txt . && useradd --system --home-dir /app bulkmail
USER bulkmail
ENTRYPOINT ["bulkmail"]
CMD ["--help"]
