"""The central (fleet) side of enrollment (docs/enrollment.md, docs/central.md).

* :mod:`.package` - the centre's side of the package (no I/O): the wire contract's container and
  chunk codec and ``Manifest`` model (``appliance.protocol.package``) with the centre's errors,
  the hash chain, the sealed record files;
* :mod:`.verify` - every check the centre makes on a package before it accepts it;
* :mod:`.store` - the per-device store on disk (chunks, verified packages, records; 0600);
* :mod:`.receiver` - the MQTT receiver (``appliance fleet receive``);
* :mod:`.commander`, :mod:`.enroll`, :mod:`.issue`, :mod:`.citizens` - the scripted enrollment
  driver (``appliance fleet enroll``) and instant issuance (``appliance fleet issue``).
"""
