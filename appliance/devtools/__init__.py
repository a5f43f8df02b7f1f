"""Development helpers shared by the demo, the tests and the benchmarks (local broker, ports)."""
