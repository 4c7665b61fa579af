"""Local imitation of processor APIs for tests and demos.

The sandbox is a standalone FastAPI app: it imports nothing from the rest of
the project, so everything that talks to it does so over HTTP exactly as it
would talk to the real service. Each imitated processor lives in its own
module and is mounted under its own URL prefix: ``/cleverreach`` (newsletter),
``/timify`` (appointments), ``/flexperto`` (video consultation), ``/isic``
(student ID cards) and ``/nect`` (identification with the eID);
``/_sandbox/*`` holds control routes for tests (state dump, reset, simulated
user actions) that are never subject to auth or fault injection.

Entry points: :func:`sandbox.app.create_app` and :func:`sandbox.app.serve`.
"""
