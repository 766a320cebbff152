# The celerylab kit image: Python, the pinned requirements, and celerylab installed editable at /kit.
# docker-compose.yml builds it and mounts the checkout over /kit, so your edits to labs/ are live.
FROM python:3.11.9-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /kit

# Dependencies first (everything but the kit itself), so editing the kit does not reinstall them.
COPY requirements.txt /tmp/requirements.txt
RUN grep -v '^-e ' /tmp/requirements.txt > /tmp/requirements-deps.txt \
    && pip install -r /tmp/requirements-deps.txt

COPY . /kit
RUN pip install --no-deps -e /kit \
    && useradd --uid 1000 --create-home learner \
    && chown -R learner /kit

USER learner
CMD ["celerylab", "--help"]
