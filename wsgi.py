"""The WSGI entry point: ``gunicorn wsgi:app``; also what ``flask`` commands load."""

from app import create_app
from celery_app import celery

app = create_app(celery=celery)
