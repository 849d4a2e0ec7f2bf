"""What producer and consumers agree on: the job schema, settings, object store, errors, timing.

Imports only the standard library, pydantic and boto3, so the submitting side never pulls in
Celery, Dask or the scientific stack.
"""
