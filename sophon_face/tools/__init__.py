"""Operator tools the CLI runs beside the daemon (import, export, backup, restore).

``import`` and ``export`` reach a gallery through the same service code as the API: over
HTTP against a running daemon, or in this process on a stopped daemon's data directory
(``targets.py``).
"""
