"""Every MQTT topic of software updates and fleet jobs (built by the wire contract,
appliance/protocol/topics.py).

=====================================  =========  ========================================
topic                                  direction  what
=====================================  =========  ========================================
``{prefix}/{device}/jobs/desired``     fleet ->   the device's current job: a signed job
                                                  document (jobdoc.py), **retained**, so a
                                                  kiosk offline at the time gets it when it
                                                  returns; an empty retained message clears
                                                  it (cancel, abort)
``{prefix}/{device}/jobs/reported``    -> fleet   the device's state of that job (retained,
                                                  signed with the device key like every
                                                  message of the kiosk)
``{prefix}/{device}/update/get``       -> fleet   a chunk request of a release bundle:
                                                  ``{"sha256", "offset", "length"}``
``{prefix}/{device}/update/data``      fleet ->   the chunk: JSON header line, ``\\n``, bytes
=====================================  =========  ========================================
"""

from __future__ import annotations

from ..protocol.topics import Topics


def job_desired(prefix: str, device: str) -> str:
    return Topics(prefix, device).jobs_desired


def job_reported(prefix: str, device: str) -> str:
    return Topics(prefix, device).jobs_reported


def update_get(prefix: str, device: str) -> str:
    return Topics(prefix, device).update_get


def update_data(prefix: str, device: str) -> str:
    return Topics(prefix, device).update_data


#: In-process pseudo-topics of command jobs: the job agent hands the job's command to the
#: daemon's dispatcher as a message on JOB_COMMAND and takes its reply from JOB_REPLY. The
#: daemon never subscribes to them and MQTT clients cannot publish to ``$`` topics, so no
#: message from the network can carry them.
JOB_COMMAND = "$jobs/cmd"
JOB_REPLY = "$jobs/reply"
