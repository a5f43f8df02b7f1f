"""The wire contract between a kiosk and the fleet, the centre and the dev tools
(docs/protocol.md): both ends build and parse their messages with this package.

* :mod:`.topics`: every topic of the tree, its wildcard filters and a parser.
* :mod:`.messages`: the message models (status, events, telemetry, acknowledgements) and their
  JSON Schemas (``appliance schemas``).
* :mod:`.codes`: :class:`~.codes.ErrorCode` and :class:`~.codes.EventType`, every error code and
  event type that exists, from which docs/protocol.md's tables are generated.

It sits on the ground floor (it imports nothing of the appliance but itself), so the error tree,
the kiosk agent and the fleet side all import it without a cycle.
"""
