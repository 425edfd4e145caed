"""Ways to look at recorded runs: ``show`` (one run in readable sections), ``diff`` (what differs
between two runs), ``report`` (the HTML sweep report), ``export`` (the portable JSON export) and
``openlineage`` (OpenLineage RunEvents)."""
