"""The returns counter's HTTP API (torch-free): one photo in, its categories out, on the
nights' workers, rows, files, CSV and audits. ``api.app.create_app`` builds it; run it with::

    refund-sorter api-token create NAME     # prints a new token once
    refund-sorter api-server                # http://127.0.0.1:8100, its OpenAPI page at /docs

and workers that consume the counter's queue (``celery -A worker worker -Q classify,counter``,
or ``-Q counter`` for workers kept for it). docs/api.md says how to call it.
"""
