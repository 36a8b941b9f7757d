FROM python:3.11-slim
WORKDIR /srv/tally
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY migrations migrations
COPY alembic.ini celery_app.py wsgi.py ./
RUN pip install --no-cache-dir . && useradd --system tally
USER tally
EXPOSE 5000
CMD ["gunicorn", "--worker-class", "gevent", "--worker-connections", "1000", "--bind", "0.0.0.0:5000", "wsgi:app"]
