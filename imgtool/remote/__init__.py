"""Sharing galleries through OCI registries (and OCI image layout folders).

    remotes   named remotes under the home (URL rules, TLS options)
    auth      credentials (auth files, imgtool's own) and the Basic/Bearer flows
    registry  the distribution HTTP client (retries, limits, redirects, referrers)
    layout    the same operations over OCI image layout folders
    format    the registry format: repository names, media types, config, chunk indexes
    push/pull/replicate  moving versions; only missing chunks travel
"""
