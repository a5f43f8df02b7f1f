"""fingerprint capability: interface, backends, simulator."""
