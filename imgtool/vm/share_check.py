"""Host folders a VM may share, checked where the share is given (vm new, vm update, the environment file).

A share must be an existing folder the user can read and enter, given as its real path (symlinks
resolved, so what virtiofsd serves cannot change under it later). It must not be the imgtool home or
anything in it: a guest writing there could damage the store and other VMs' disks. A folder that
contains the home (sharing ~ with the home in ~/.local/share/imgtool, say) may be shared read-only
only, for the same reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgtool.errors import InvalidArgument, NotFound
from imgtool.vm.shares import Share


def check_host(share: Share, *, home: Path) -> Share:
    """`share` with its host folder resolved, or NotFound / InvalidArgument saying what is wrong."""
    given = share.host
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError:
        raise NotFound(f"shared folder {given} does not exist", hint="create it, or fix the path") from None
    except PermissionError:
        raise InvalidArgument(f"shared folder {given} cannot be read by this user (permission denied on it or a "
                              "folder above it)", hint="share a folder you can read") from None
    except OSError as exc:  # a loop of symlinks, a permission error on a parent
        raise InvalidArgument(f"shared folder {given} cannot be resolved: {exc.strerror}",
                              hint="share a folder you can reach") from None
    if not real.is_dir():
        raise InvalidArgument(f"shared path {given} is not a folder", hint="share the folder that holds it")
    if not os.access(real, os.R_OK | os.X_OK):
        raise InvalidArgument(f"shared folder {given} cannot be read by this user",
                              hint=f"give yourself read access (chmod u+rx {real}) or share another folder")
    home_real = home.resolve()
    if real == home_real or real.is_relative_to(home_real):
        raise InvalidArgument(f"shared folder {given} is the imgtool home or inside it ({home_real})",
                              hint="share a folder outside the home: a guest must not reach the store")
    if home_real.is_relative_to(real) and not share.readonly:
        raise InvalidArgument(f"shared folder {given} contains the imgtool home ({home_real})",
                              hint=f"share it read-only ({given}:{share.guest}:ro) or share a folder below it")
    return Share(real, share.guest, share.readonly)
