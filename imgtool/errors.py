"""The error categories of imgtool: defined once, in the generic store, and re-exported here.

The store's base class is the domain's base too (`ImgtoolError`), so one hierarchy maps to exit codes.
"""

from store.errors import (
    AlreadyExists,
    Corrupt,
    InvalidArgument,
    Locked,
    NotFound,
    ReadOnlyStore,
    Refused,
    StorageFull,
    StoreError,
    ToolFailed,
    ToolMissing,
    UnsafeImage,
)

ImgtoolError = StoreError

__all__ = [
    "AlreadyExists",
    "Corrupt",
    "ImgtoolError",
    "InvalidArgument",
    "Locked",
    "NotFound",
    "ReadOnlyStore",
    "Refused",
    "StorageFull",
    "ToolFailed",
    "ToolMissing",
    "UnsafeImage",
]
