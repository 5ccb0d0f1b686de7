"""The Prometheus endpoint, ``refund-sorter metrics-server``: what it reads at each scrape
(``metrics``) and the small HTTP server that serves it, behind optional basic auth
(``server``).

A role of its own, like the review desk: it reads the core's tables (the model registry's
among them, for the serving and candidate versions) and the broker, and the desk's queries
(its backlog, its accuracy report, a night's failed share), and writes nothing. Only ``cli``
imports it.
"""
