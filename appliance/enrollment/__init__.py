"""Enrollment: the kiosk's main job (session, sealed records, package, upload)."""
