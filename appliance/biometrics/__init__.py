"""Biometric records (ISO/IEC 19794) and quality."""
