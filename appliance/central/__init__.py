"""The central (fleet) side of enrollment (docs/enrollment.md, docs/central.md).

* :mod:`.package` - pure codecs: the ``APPKG1`` container, the manifest, the hash chain, the
  upload chunks (no I/O);
* :mod:`.verify` - every check the centre makes on a package before it accepts it;
* :mod:`.store` - the per-device store on disk (chunks, verified packages, records; 0600);
* :mod:`.receiver` - the MQTT receiver (``appliance fleet receive``);
* :mod:`.commander`, :mod:`.enroll`, :mod:`.issue`, :mod:`.citizens` - the scripted enrollment
  driver (``appliance fleet enroll``) and instant issuance (``appliance fleet issue``).
"""
