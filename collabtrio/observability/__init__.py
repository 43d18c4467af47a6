"""What the server tells its operator: its counters and the ``/metrics`` route.

- :mod:`.sink`: :class:`~collabtrio.observability.sink.Metrics`, the counters the
  transport, rooms, storage writer and application add to (plain integers and
  fixed-bucket histograms, standard library only, so every layer may be handed one),
  and :class:`~collabtrio.observability.sink.NullMetrics`, which counts nothing.
- :mod:`.prometheus`: the Prometheus side, a registry per server whose collector
  reads those counters and the live state (connections, rooms, members) at scrape
  time, and the ``GET /metrics`` handler.

Log formats (text, JSON lines) are :mod:`collabtrio.logs`.
"""
