"""refund-sorter: nightly sorting of returned-clothing photos into main and sub categories."""

__version__ = "0.1.0"
