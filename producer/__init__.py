"""The producer: scans the incoming folder and fans each new image out as one task.

Run it by hand with ``refund-sorter sweep`` (add ``--local`` to classify in this process
without a broker); Celery beat runs it nightly through the ``refund_sorter.sweep`` task
(``producer.tasks``). It never imports PyTorch or the worker, so it starts in well under a
second.
"""
