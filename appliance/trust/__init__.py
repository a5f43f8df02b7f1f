"""Trust layer: device identity, fleet certificates, signed command envelopes, signed
configuration documents and sealed biometric records.

Pure library code: nothing here opens a network connection. The daemon wires the verifier into
its command dispatch; see docs/trust.md for the formats and the policies.
"""
