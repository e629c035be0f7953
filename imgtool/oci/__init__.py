"""The OCI vocabulary imgtool stands on: media types, descriptors, the target protocol, referrers.

Below `remote/` (which implements targets: a registry, a layout folder) and `trust/` (which signs and
judges what referrers carry); it knows nothing of galleries, VMs or the home.
"""
