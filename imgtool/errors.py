"""The error categories of imgtool (defined once, in the store, and re-exported)."""

from store.errors import (
    AlreadyExists,
    Corrupt,
    ImgtoolError,
    InvalidArgument,
    Locked,
    NotFound,
    ReadOnlyStore,
    Refused,
    StorageFull,
    ToolFailed,
    ToolMissing,
    UnsafeImage,
)

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
