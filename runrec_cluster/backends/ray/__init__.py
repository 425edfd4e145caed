"""The Ray backend: ``backend`` (RayBackend), ``driver`` (the submitting process's connection
and the tasks it owns), ``task`` (what runs in the Ray worker), ``states`` (the pure outcome
table, importable without Ray) and ``state_api`` (the Ray state API queries).

Importing this package imports nothing from Ray; ``backend``, ``driver``, ``task`` and
``state_api`` need it (``pip install 'runrec-cluster[ray]'``).
"""
