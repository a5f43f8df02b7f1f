"""The kiosk station: the enrollment as a local flow driven by the kiosk's own screen.

* :mod:`.flow`: the state machine (welcome, officer sign-in, identify, confirm, consent,
  portrait, fingers, review, receipt), persisted in the store at every step;
* :mod:`.backend`: the only module that calls the enrollment manager and the citizen lookup;
* :mod:`.officers`: officers' credentials from the signed configuration;
* :mod:`.api`: the local API (FastAPI, loopback only, per-boot screen token) and the static
  reference screen in ``static/``.

docs/local-api.md describes the API and the screen.
"""
