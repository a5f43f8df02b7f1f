"""card capability: interface, backends, simulator."""
