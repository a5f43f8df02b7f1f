"""camera capability: interface, backends, simulator."""
