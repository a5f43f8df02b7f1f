"""Software updates on the kiosk: signed release bundles (bundle.py), installed side by side
and switched atomically with a health-checked trial (docs/updates.md)."""
