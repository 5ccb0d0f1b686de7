"""The review desk: a web page where people confirm or correct the photos the model was
unsure of (``needs_review``), and the way their answers go back into training.

- ``app``: the FastAPI application: login, the queue of photos, decisions, the photos
  themselves (``create_app``). Started by ``refund-sorter review-server``.
- ``auth``: who may log in, the key that signs session cookies, CSRF tokens, the limit on
  failed logins.
- ``queue``: what the page reads: the next photo to review (leaving out those another
  reviewer holds), the filters, a photo's history, the reviewer's last decision.
- ``progress``: each reviewer's day and what is left, for the progress page.
- ``training_set``: copying reviewed photos into a ``<main>/<sub>/`` folder for ``train``.

Every row is written by ``refund_sorter.crud``. Never imports PyTorch: the model's
categories come from ``registry.checkpoint_taxonomy``.
"""
