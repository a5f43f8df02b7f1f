"""Fleet-side tools for administrators (``appliance fleet ...``): key management in this wave."""
