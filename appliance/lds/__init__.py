"""ICAO 9303 Logical Data Structure for the CCCD: pure codecs, no I/O.

Modules: :mod:`.tlv` (BER-TLV), :mod:`.mrz` (TD1 MRZ), :mod:`.files` (EF.COM, DG1, DG2, DG13),
:mod:`.sod` (EF.SOD and Passive Authentication), :mod:`.issuance` (the issuance package the
fleet sends and the kiosk checks before writing).

Decoding malformed bytes raises :class:`~appliance.errors.ProtocolError` with code
``lds_malformed``; invalid arguments to a builder raise :class:`ValueError` (pydantic turns that
into a field error for command payloads).
"""
