"""The serving side's business logic, one module per domain.

* ``predict``: a prediction request end to end (v1 predict, v2 infer, a job's chunk).
* ``jobs``: background jobs: submit, run in a worker, cancel, retry, reconcile.
* ``registry``: what a management key may do to the registry (the registry API).

Reads live in ``inference.selectors`` (and ``inference.jobs.selectors``).
"""
