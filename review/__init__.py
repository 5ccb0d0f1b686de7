"""The review desk: the pages where people confirm or correct the photos the model was unsure
of and decide the blind audit, and the read-only figures built on their decisions.

- The desk: ``app`` (the FastAPI application, ``refund-sorter review-server``), ``auth``
  (accounts, session cookies, CSRF, the login limit), ``queue`` (the photos left to decide),
  ``progress`` (each reviewer's day and what is left).
- What the decisions measure: ``accuracy`` (live accuracy from the blind audit),
  ``threshold`` (the review threshold live photos suggest), ``comparison`` (a candidate
  model against the serving one).
- The nights: ``nights`` (the Nights pages' figures), ``plots`` (their plots), ``report``
  (one night's page as one file).
- Back into training: ``training_set`` (reviewed photos as a ``<main>/<sub>/`` folder).

Every row is written by ``refund_sorter.crud``. Never imports PyTorch: the model's
categories come from ``registry.checkpoint_taxonomy``.
"""
