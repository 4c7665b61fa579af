"""The bottom of the project: what every layer reads and nothing here imports back.

``core.settings`` (the one settings object) and ``core.clock`` (the controller's calendar:
Berlin, the booking grid). Connectors and models import from here; flows import those; the
``psync`` CLI sits on top (``tests/test_architecture.py`` holds the arrows to that).
"""
