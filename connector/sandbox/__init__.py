"""Local, contract-faithful stand-ins for Moesif and Segment, for the demo, tests and benchmarks."""
