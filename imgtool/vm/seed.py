"""cloud-init NoCloud seed ISOs: the only channel through which a new VM learns who it is.

A seed is an ISO9660 image labelled `cidata` holding two files at its root,
`meta-data` (instance id and hostname) and `user-data` (our `#cloud-config`
creating the admin user, optionally combined with the user's own user-data).

Contracts:
- Every value that reaches the guest is validated first (hostname, user name,
  SSH keys, single-line values); violations raise InvalidArgument naming the rule.
- YAML is written without a YAML library: every string is emitted as a JSON string,
  which is valid YAML and cannot break out of its line.
- Nothing here logs or returns file contents: user-data may hold secrets. The ISO
  is written atomically with mode 0600 and only its digest is returned.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
from dataclasses import dataclass
from email import message_from_string
from email import policy as email_policy
from email.message import EmailMessage
from ipaddress import AddressValueError, IPv4Address
from pathlib import Path

import blake3
import pycdlib
import yaml

from imgtool.errors import InvalidArgument
from store import atomic

VOLUME_LABEL = "cidata"

# ISO9660 level-1 names (8.3, upper case, no '-') are what a reader without
# extensions sees; Linux prefers Rock Ridge and Windows Joliet, both of which
# carry the real names cloud-init looks for.
_FILES = (
    ("meta-data", "/METADATA.;1"),
    ("user-data", "/USERDATA.;1"),
    ("network-config", "/NETWORK.;1"),  # only when the VM has NICs on imgtool networks
)
# QEMU gives the first NIC without mac= this address; imgtool's user-mode NIC is that one (its network
# NICs all have explicit MACs), so network-config can keep it on DHCP by MAC.
USER_NIC_MAC = "52:54:00:12:34:56"
HOSTS_TAG = "# imgtool-network"  # marks the /etc/hosts lines the seed manages (rewritten at every boot)

# Serialise MIME with plain newlines (the guest is Unix). Bodies are never
# rewrapped: 7bit parts keep long lines (SSH keys) intact.
_MIME_POLICY = email_policy.default.clone(linesep="\n")

# Header of a user-data document -> the MIME type cloud-init gives it. Longer
# headers first: "#cloud-config-archive" also starts with "#cloud-config".
_USER_DATA_TYPES = (
    ("#cloud-config-archive", "cloud-config-archive"),
    ("#cloud-config", "cloud-config"),
    ("#cloud-boothook", "cloud-boothook"),
    ("#include-once", "x-include-once-url"),
    ("#include", "x-include-url"),
    ("#part-handler", "part-handler"),
    ("## template: jinja", "jinja2"),
    ("#!", "x-shellscript"),
)

# cloud-init's default merge for a later cloud-config part replaces whole keys, so
# a user's `users:` would silently delete our admin user (and with it SSH access).
# Lists append and dicts recurse instead; scalars from the user's part still win.
_USER_CLOUD_CONFIG_MERGE = "list(append)+dict(recurse_array)+str()"

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_KEY_TYPE = re.compile(r"ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9-]+@openssh\.com")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class GuestNic:
    """A NIC on an imgtool network as the guest configures it."""

    mac: str  # lower-case, colon-separated
    address: str  # ADDRESS/PREFIX


@dataclass(frozen=True)
class Provisioning:
    """What a VM is told at first boot. `user_data` is the user's own document (any cloud-init type)."""

    instance_id: str
    hostname: str
    admin_user: str
    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = None
    mounts: tuple[tuple[str, ...], ...] = ()  # cloud-init `mounts` entries (fstab fields): the shares
    nics: tuple[GuestNic, ...] = ()  # NICs on imgtool networks: a static address each
    hosts: tuple[tuple[str, str], ...] = ()  # (address, name): peers on those networks, for /etc/hosts


def is_hostname(name: str) -> bool:
    """Whether `name` is an RFC 1123 label (what /etc/hosts and the seed's hostname take)."""
    return bool(_HOSTNAME.fullmatch(name))


def new_instance_id() -> str:
    """A fresh instance id; cloud-init re-runs per-instance modules whenever it changes."""
    return "iid-" + secrets.token_hex(16)


# --- validation -------------------------------------------------------------


def _single_line(what: str, value: str) -> None:
    if _CONTROL.search(value):
        raise InvalidArgument(
            f"{what} must be a single line without control characters",
            hint="remove newlines, tabs and other control characters",
        )


def validate(p: Provisioning) -> None:
    """Raise InvalidArgument (naming the broken rule) unless every field is safe to send to a guest."""
    for what, value in (
        ("instance id", p.instance_id),
        ("hostname", p.hostname),
        ("admin user", p.admin_user),
    ):
        _single_line(what, value)
    if not _INSTANCE_ID.fullmatch(p.instance_id):
        raise InvalidArgument(
            f"instance id {p.instance_id!r} is invalid",
            hint="use 1-128 characters from A-Z a-z 0-9 . _ : - starting with a letter or digit",
        )
    if not _HOSTNAME.fullmatch(p.hostname):
        raise InvalidArgument(
            f"hostname {p.hostname!r} is not a valid RFC 1123 label",
            hint="use 1-63 letters, digits and '-', not starting or ending with '-'",
        )
    if not _USER.fullmatch(p.admin_user):
        raise InvalidArgument(
            f"admin user name {p.admin_user!r} is invalid",
            hint="use a POSIX user name: [a-z_][a-z0-9_-]{0,31}",
        )
    for number, key in enumerate(p.ssh_keys, start=1):
        validate_ssh_key(key, number)
    _validate_network(p)


_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_FSTAB_FIELD = re.compile(r"[A-Za-z0-9._@+,=/:-]+")


def _validate_network(p: Provisioning) -> None:
    """NICs, hosts entries and mounts reach guest config files: only plain values pass."""
    for nic in p.nics:
        if not _MAC.fullmatch(nic.mac):
            raise InvalidArgument(f"MAC {nic.mac!r} is not six lower-case hex bytes", hint="e.g. 52:54:00:12:34:56")
        _address(nic.address.partition("/")[0])
        if not nic.address.partition("/")[2].isdigit():
            raise InvalidArgument(f"NIC address {nic.address!r} has no prefix length", hint="e.g. 10.91.0.2/24")
    for address, name in p.hosts:
        _address(address)
        if not _HOSTNAME.fullmatch(name):
            raise InvalidArgument(f"host name {name!r} is not a valid RFC 1123 label",
                                  hint="use 1-63 letters, digits and '-'")
    for entry in p.mounts:
        if not all(_FSTAB_FIELD.fullmatch(field) for field in entry):
            raise InvalidArgument(f"mount entry {list(entry)} holds characters an fstab line cannot",
                                  hint="use plain paths: letters, digits and . _ @ + - /")


def _address(text: str) -> None:
    try:
        IPv4Address(text)
    except AddressValueError:
        raise InvalidArgument(f"{text!r} is not an IPv4 address", hint="e.g. 10.91.0.2") from None


def validate_ssh_key(key: str, number: int = 1) -> None:
    """Check one authorized_keys line: `<type> <base64 blob> [comment]`, no options, one line.

    The key itself is never echoed in the error (only its position), so a pasted
    private key does not end up in logs.
    """
    what = f"SSH key #{number}"
    _single_line(what, key)
    fields = key.split(" ", 2)
    if len(fields) < 2 or not _KEY_TYPE.fullmatch(fields[0]) or not _BASE64.fullmatch(fields[1]):
        raise InvalidArgument(
            f"{what} is not a public key line",
            hint="expected '<type> <base64> [comment]' with type ssh-*, ecdsa-sha2-* or sk-*@openssh.com "
            "(the contents of a .pub file)",
        )
    if _embedded_type(fields[1]) != fields[0]:
        raise InvalidArgument(
            f"{what}: the base64 blob does not encode a {fields[0]} key",
            hint="copy the whole line of the .pub file unchanged",
        )


def _embedded_type(blob: str) -> str | None:
    """The key type string an SSH public key blob starts with (uint32 length + name)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 4:
        return None
    length = int.from_bytes(raw[:4], "big")
    if length > len(raw) - 4:
        return None
    return raw[4 : 4 + length].decode("ascii", "replace")


# --- documents --------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML scalar that is exactly `value`: JSON strings are valid YAML flow scalars."""
    return json.dumps(value)


def meta_data(p: Provisioning) -> str:
    """The NoCloud meta-data document: instance id and hostname, one line each."""
    validate(p)
    return f"instance-id: {_q(p.instance_id)}\nlocal-hostname: {_q(p.hostname)}\n"


def cloud_config(p: Provisioning) -> str:
    """Our own `#cloud-config`: the hostname and the admin user with passwordless sudo and its keys."""
    validate(p)
    lines = [
        "#cloud-config",
        f"hostname: {_q(p.hostname)}",
        "users:",
        f"  - name: {_q(p.admin_user)}",
        f"    sudo: {_q('ALL=(ALL) NOPASSWD:ALL')}",
        f"    shell: {_q('/bin/sh')}",
    ]
    if p.ssh_keys:
        lines.append("    ssh_authorized_keys:")
        lines.extend(f"      - {_q(key)}" for key in p.ssh_keys)
    if p.mounts:
        lines.append("mounts:")
        lines.extend(f"  - [{', '.join(map(_q, entry))}]" for entry in p.mounts)
    if p.nics:
        # bootcmd runs at every boot: the peers' names stay current when the seed is rebuilt at a start.
        # manage_etc_hosts `localhost` (images often say true, which rewrites the whole file from a
        # template after bootcmd) keeps cloud-init to its own hostname line.
        lines += ["manage_etc_hosts: localhost", "bootcmd:", f"  - [sh, -c, {_q(hosts_script(p.hosts))}]"]
    return "\n".join(lines) + "\n"


def hosts_script(hosts: tuple[tuple[str, str], ...]) -> str:
    """A shell command that replaces the seed's lines in /etc/hosts by `hosts` (values validated before)."""
    lines = "".join(f" '{address} {name} {HOSTS_TAG}'" for address, name in hosts)
    script = f"sed -i '/ {HOSTS_TAG}$/d' /etc/hosts"
    return f"{script} && printf '%s\\n'{lines} >> /etc/hosts" if hosts else script


def network_config(p: Provisioning) -> str | None:
    """network-config (version 2) for a VM with NICs on imgtool networks, else None (cloud-init's default).

    Given a network-config, cloud-init configures only what it names, so the user-mode NIC (outbound
    access, SSH) is named too, by QEMU's default MAC, with DHCP as before.
    """
    validate(p)
    if not p.nics:
        return None
    lines = ["version: 2", "ethernets:", "  user0:", "    match:", f"      macaddress: {_q(USER_NIC_MAC)}",
             "    dhcp4: true"]
    for index, nic in enumerate(p.nics, start=1):
        lines += [f"  net{index}:", "    match:", f"      macaddress: {_q(nic.mac)}",
                  f"    addresses: [{_q(nic.address)}]", "    dhcp4: false"]
    return "\n".join(lines) + "\n"


def user_data(p: Provisioning) -> str:
    """The user-data document: our cloud-config alone, or a MIME multipart with the user's part after it.

    Combination rules (what cloud-init does with each part):
    - the user's `#cloud-config` becomes a text/cloud-config part with a Merge-Type
      that appends lists, so their `users:` adds to our admin user instead of replacing it;
    - `#!`, `#cloud-boothook`, `#include`, `#include-once`, `#part-handler`,
      `#cloud-config-archive`, `## template: jinja` get their cloud-init MIME types;
    - a document that is already MIME has its parts passed through after ours (a
      single-part MIME document is attached as that one part); its cloud-config parts
      get the same list-appending Merge-Type unless they carry one already;
    - anything else is refused: cloud-init would silently ignore it.
    """
    ours = cloud_config(p)
    if p.user_data is None:
        return ours
    outer = EmailMessage(policy=_MIME_POLICY)
    outer.make_mixed()
    outer.attach(_text_part(ours, "cloud-config", "imgtool.cfg"))
    for part in _user_parts(p.user_data):
        outer.attach(part)
    outer["MIME-Version"] = "1.0"
    return outer.as_string()


def _text_part(text: str, subtype: str, filename: str, merge_type: str | None = None) -> EmailMessage:
    part = EmailMessage(policy=_MIME_POLICY)
    # 7bit keeps plain-ASCII parts readable in the guest; anything else goes base64,
    # because cloud-init decodes 8bit payloads as Latin-1 and would mangle UTF-8.
    cte = "7bit" if text.isascii() else "base64"
    part.set_content(text, subtype=subtype, cte=cte, disposition="attachment", filename=filename)
    if merge_type is not None:
        part["Merge-Type"] = merge_type
    return part


def _user_parts(document: str) -> list[EmailMessage]:
    if not document.strip():
        raise InvalidArgument("the user-data file is empty", hint="give a file starting with #cloud-config or #!")
    first = document.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    lowered = first.lower()
    if lowered.startswith(("content-type:", "mime-version:")):
        return _mime_parts(document)
    for header, subtype in _USER_DATA_TYPES:
        if first.startswith(header):
            merge = _USER_CLOUD_CONFIG_MERGE if subtype == "cloud-config" else None
            if subtype == "cloud-config":
                check_cloud_config(document, "the user-data file")
            return [_text_part(document, subtype, "user-data", merge)]
    raise InvalidArgument(
        "the user-data file has no cloud-init header on its first line",
        hint="start it with #cloud-config, #!, #cloud-boothook, #include, #part-handler, "
        "## template: jinja or a MIME Content-Type header",
    )


def _mime_parts(document: str) -> list[EmailMessage]:
    # With the default policy the parser builds EmailMessage objects throughout.
    parsed = message_from_string(document, policy=_MIME_POLICY)
    if not isinstance(parsed, EmailMessage):
        raise InvalidArgument("the user-data MIME document cannot be parsed", hint="check its headers")
    if not parsed.is_multipart():
        _check_cloud_config_parts([parsed])
        return [parsed]
    parts = parsed.get_payload()
    passed = [part for part in parts if isinstance(part, EmailMessage)] if isinstance(parts, list) else []
    if not passed:
        raise InvalidArgument("the user-data MIME document has no parts", hint="check its boundary lines")
    for part in passed:
        # Same reason as for a bare #cloud-config: keep our admin user unless the
        # user chose a merge strategy themselves.
        if part.get_content_type() == "text/cloud-config" and "Merge-Type" not in part and "X-Merge-Type" not in part:
            part["Merge-Type"] = _USER_CLOUD_CONFIG_MERGE
    _check_cloud_config_parts(passed)
    return passed


def _check_cloud_config_parts(parts: list[EmailMessage]) -> None:
    for part in parts:
        if part.get_content_type() == "text/cloud-config":
            check_cloud_config(str(part.get_content()), "a text/cloud-config part of the user-data file")


def check_cloud_config(text: str, what: str) -> None:
    """Refuse a cloud-config that cloud-init would drop inside the guest: not YAML, or YAML but not a mapping.

    The error names the line and YAML's complaint, never the text (user-data may hold secrets).
    """
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "it is not valid YAML"
        raise InvalidArgument(f"{what} is not valid #cloud-config YAML{where}: {problem}",
                              hint="fix that line (cloud-init would ignore the whole document in the guest); "
                              "check it with: cloud-init schema --config-file FILE") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise InvalidArgument(f"{what} is YAML but not a mapping of cloud-config keys "
                              f"(it is a {type(loaded).__name__})",
                              hint="write keys at the top level, e.g. packages: [nginx]")


# --- the ISO ----------------------------------------------------------------


def build_iso(p: Provisioning) -> bytes:
    """The seed ISO image as bytes (Joliet + Rock Ridge, label `cidata`)."""
    contents = {"meta-data": meta_data(p).encode(), "user-data": user_data(p).encode()}
    network = network_config(p)
    if network is not None:
        contents["network-config"] = network.encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, iso_path in _FILES:
            if name not in contents:
                continue
            data = contents[name]
            # 0o100400: a regular file readable by its owner only inside the guest's
            # view of the ISO (user-data can hold secrets).
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path=iso_path,
                rr_name=name,
                joliet_path=f"/{name}",
                file_mode=0o100400,
            )
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def write_seed(path: Path, p: Provisioning) -> str:
    """Write the seed ISO at `path` atomically (temp file + rename), mode 0600.

    Returns "blake3:<hex>" of the ISO bytes. A crash leaves either the old file or
    the new one, plus at most a stray `.tmp` sibling.
    """
    image = build_iso(p)
    digest = "blake3:" + blake3.blake3(image).hexdigest()
    atomic.replace(path, image, mode=0o600)
    return digest
