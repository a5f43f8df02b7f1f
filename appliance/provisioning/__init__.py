"""Kiosk provisioning: ``appliance provision`` (keys, configuration, self-test, claim, trust
bundle) and ``appliance selftest``. The fleet side of the claim is ``appliance fleet approve``
(:mod:`appliance.fleet.approve`)."""
