"""The NBD protocol's numbers and wire shapes (https://github.com/NetworkBlockDevice/nbd, doc/proto.md).

Pure: the server (`imgtool/nbd/server.py`) and its tests build and parse messages with these.
All integers are big-endian on the wire.
"""

from __future__ import annotations

import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server) and client flags share these bits
FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_BIT = 1 << 31
REP_ERR_UNSUP = REP_ERR_BIT | 1
REP_ERR_INVALID = REP_ERR_BIT | 3
REP_ERR_UNKNOWN = REP_ERR_BIT | 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_CAN_MULTI_CONN = 1 << 8
# Read-only, flush accepted (a no-op: nothing is written), and several connections see the same bytes.
EXPORT_FLAGS = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6

EPERM = 1
EIO = 5
EINVAL = 22
ENOTSUP = 95
ESHUTDOWN = 108

MIN_BLOCK = 512
PREFERRED_BLOCK = 128 << 10
MAX_REQUEST = 32 << 20  # QEMU's NBD_MAX_BUFFER_SIZE: its client never asks for more
MAX_OPTION = 4096  # an option's data (an export name and a few info requests) is small
MAX_NAME = 4096

OPTION_HEAD = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
INFO_EXPORT_BODY = struct.Struct(">HQH")  # INFO_EXPORT, size, transmission flags
INFO_BLOCK_BODY = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum


def greeting() -> bytes:
    return NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply, len(data)) + data


def info_export(size: int) -> bytes:
    return INFO_EXPORT_BODY.pack(INFO_EXPORT, size, EXPORT_FLAGS)


def info_block_size() -> bytes:
    return INFO_BLOCK_BODY.pack(INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST)


def simple_reply(error: int, handle: int) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def parse_go(data: bytes) -> tuple[str, list[int]] | None:
    """An NBD_OPT_INFO/GO body: (export name, info types asked for), or None when malformed."""
    if len(data) < 6:
        return None
    (name_len,) = struct.unpack_from(">I", data, 0)
    if name_len > MAX_NAME or 4 + name_len + 2 > len(data):
        return None
    name = data[4:4 + name_len]
    (count,) = struct.unpack_from(">H", data, 4 + name_len)
    rest = data[4 + name_len + 2:]
    if len(rest) != 2 * count:
        return None
    try:
        return name.decode("utf-8"), list(struct.unpack(f">{count}H", rest))
    except UnicodeDecodeError:
        return None
