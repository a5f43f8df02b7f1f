"""The wire contract between a kiosk and the fleet, the centre and the dev tools
(docs/protocol.md). Every topic on both ends is built and parsed here; the message models are
the shapes both ends agree on (the centre parses the package and builds its acks with them,
the schemas are generated from them; the kiosk still renders most of its messages itself).

* :mod:`.topics`: every topic of the tree, its wildcard filters and a parser.
* :mod:`.messages`: the message models (status, events, telemetry, the outbox and upload
  acknowledgements) and their JSON Schemas (``appliance schemas``).
* :mod:`.codes`: :class:`~.codes.ErrorCode` and :class:`~.codes.EventType`, every error code and
  event type that exists, from which docs/protocol.md's tables are generated.
* :mod:`.package`: the enrollment package's manifest and upload chunk header models, with the
  limits both ends keep to.

It sits on the ground floor (it imports nothing of the appliance but itself), so the error tree,
the kiosk agent and the fleet side all import it without a cycle.
"""
