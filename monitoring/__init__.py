"""The Prometheus endpoint, ``refund-sorter metrics-server``: what it reads at each scrape
(``metrics``) and the small HTTP server that serves it, behind optional basic auth
(``server``).

A role of its own, like the review desk: it reads the core's tables and the broker, the
desk's queries (its backlog and its accuracy report) and which model is served
(``classifier.version``, torch-free), and writes nothing. Only ``cli`` imports it.
"""
