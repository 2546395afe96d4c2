# One image for every role of the stack: the receiver (default command), the Celery worker and
# the one-shot `crm-db` migrations. docker-compose.yml picks the command per service.
#
#   docker build -t crm-ingest .
#
# No secret is baked in: every setting arrives as environment at run time (.env.example).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv with the locked runtime dependencies and the project ------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /app

# Dependencies get a layer of their own, so a code change does not reinstall them.
# requirements.lock pins the runtime *and* the dev tools (pytest, mypy, ruff, schemathesis ...).
# The image takes only pyproject's runtime dependencies, with the lock as constraints: the
# exact versions CI tested, without the test tooling in production.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > runtime-requirements.txt \
    && pip install --constraint requirements.lock --requirement runtime-requirements.txt

# Editable install, on purpose: db/cli.py finds alembic.ini and alembic/ next to its own
# package (Path(__file__).parent.parent), so the code must run from the repository tree at
# /app, not from a copy in site-packages. The editable install puts only the metadata and the
# console scripts (crm-db, crm-worker-health, crm-smoke, ...) into /opt/venv and points the
# imports at /app. The runtime stage lays the same tree at the same path.
COPY . .
RUN pip install --no-deps --editable . && pip check

# --- runtime: slim base, the venv, the code, a user without privileges -------------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed, numeric uid/gid, so orchestrators can check runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin crm

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Only what runs: the packages, the migrations and their config (no tests, no bench).
COPY alembic.ini ./
COPY alembic ./alembic
COPY cli ./cli
COPY common ./common
COPY db ./db
COPY ingest ./ingest
COPY worker ./worker
# Compiled once here: the code is owned by root and read-only to the service user.
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8000
# No HEALTHCHECK here: one image plays three roles, so docker-compose.yml defines a check per
# service (/readyz for the receiver, crm-worker-health for the worker, none for migrate).
CMD ["crm-ingest", "--host", "0.0.0.0", "--port", "8000"]
