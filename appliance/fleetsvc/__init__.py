"""The fleet service (``appliance fleet serve``): ingest, database, alarms, dashboard and API.

Fleet-tools room: it imports the kiosk's wire formats and the fleet tools, never the other way
round (pyproject.toml, import contract 1). docs/fleet-service.md describes it.
"""
