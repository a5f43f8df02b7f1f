"""Fleet-side tools for administrators (``appliance fleet ...``): keys, claim tokens and
approvals, devices, signed send and push-config, watch, the shared-subscription controller
(docs/fleet-tools.md); the fleet simulator and ingest for load tests."""
