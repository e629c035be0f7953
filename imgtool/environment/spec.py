"""imgtool.yaml: parsed and validated into frozen records before anything happens.

The file mirrors the command line, so nothing is learned twice:

    name: demo                      # optional; default: the file's folder name
    networks:
      lan: {subnet: 10.91.7.0/24}   # subnet optional (`lan:` alone takes a free /24)
    vms:
      web:                          # made as demo-web
        image: team/base@latest     # vm new's long options, '-' written '_'
        cpus: 2
        memory: 1024
        share: [./src:/srv/src, ./docs:/srv/docs:ro]    # host paths relative to this file
        forward: ["8080:80"]
        network: [lan, "lan:10.91.7.20"]   # NAME[:ADDRESS]; NAME is one of networks:
        provision: |                # a script run once after the first boot
          apt-get install -y make

Why PyYAML's node API (yaml.compose) and not its loader: nodes carry line numbers, so every error
names file, line and key; duplicate keys are found (the loader keeps the last silently); anchors and
aliases are refused (a walker following them could be made to do exponential work); and values are
typed by this schema from their text, not by YAML 1.1's guesses, which would read `8080:80` as the
base-60 number 482480 and `no` as false. Every problem in the file is reported at once (SpecError).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from imgtool.environment.nodes import Problem, Reader, Skip, SpecError, is_null
from imgtool.errors import InvalidArgument
from imgtool.names import check_name, parse_image_ref
from imgtool.net import subnet as subnets
from imgtool.vm import options, seed, share_check, shares
from imgtool.vm.record import Forward
from imgtool.vm.shares import Share

DEFAULT_FILE = "imgtool.yaml"
MAX_FILE = 1 << 20
MAX_PROVISION = 64 * 1024
TOP_KEYS = ("name", "networks", "vms")
NETWORK_KEYS = ("subnet",)
VM_KEYS = ("image", "cpus", "memory", "disk_size", "hostname", "admin_user", "ssh_key", "user_data",
           "ignore_recommendations", "allow_revoked", "share", "forward", "network", "provision")


@dataclass(frozen=True)
class NetworkSpec:
    name: str  # as written in the file
    full_name: str  # PROJECT-NAME, the network imgtool makes
    subnet: IPv4Network | None
    line: int


@dataclass(frozen=True)
class Attachment:
    network: str  # a key of networks:
    address: IPv4Address | None

    def __str__(self) -> str:
        return self.network if self.address is None else f"{self.network}:{self.address}"


@dataclass(frozen=True)
class VmSpec:
    name: str
    full_name: str
    line: int
    image: str
    cpus: int | None = None
    memory_mib: int | None = None
    disk_size: int | None = None
    hostname: str | None = None
    admin_user: str | None = None
    ssh_key: Path | None = None
    user_data: Path | None = None
    user_data_digest: str | None = None  # of the file's bytes when read: a changed file is a changed VM
    ignore_recommendations: bool = False
    allow_revoked: bool = False
    shares: tuple[Share, ...] = ()
    forwards: tuple[Forward, ...] = ()
    networks: tuple[Attachment, ...] = ()
    provision: str | None = None


@dataclass(frozen=True)
class EnvironmentSpec:
    file: Path
    project: str
    networks: tuple[NetworkSpec, ...]
    vms: tuple[VmSpec, ...]


ImageCheck = Callable[[str], None]  # raises an ImgtoolError for an image that cannot be used


def load(file: Path, *, home: Path, check_image: ImageCheck | None = None) -> EnvironmentSpec:
    """Read and validate `file`; SpecError listing every problem, each with line and key.

    `home` is the imgtool home (shares must stay out of it); `check_image` says whether an image
    reference resolves (the gallery's lookup), so unknown images are found before anything is made.
    """
    file = file.absolute()
    try:
        size = file.stat().st_size
        if size > MAX_FILE:
            raise SpecError([Problem(file, 1, "(file)", f"is {size} bytes; an environment file is at most {MAX_FILE}")])
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"{file} does not exist",
                              hint=f"write an {DEFAULT_FILE} (see the README, 'A test environment') or give -f FILE"
                              ) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(file, 1, "(file)", f"is not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {file}: {exc.strerror}",
                              hint="check the path and its permissions") from None
    return parse(text, file=file, home=home, check_image=check_image)


def parse(text: str, *, file: Path, home: Path, check_image: ImageCheck | None = None) -> EnvironmentSpec:
    """Validate the text of environment file `file` (see `load`)."""
    reader = Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError([Problem(file, (mark.line + 1) if mark else 1, "(file)",
                                 f"is not valid YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, 1, "(file)", f"is not valid YAML: {exc}")]) from None
    if root is None:
        raise SpecError([Problem(file, 1, "(file)", "is empty; it needs at least vms:")])
    spec = _Builder(reader, home, check_image).build(root)
    if reader.problems:
        raise SpecError(reader.problems)
    assert spec is not None
    return spec


def _free_subnet(text: str) -> IPv4Network:
    return subnets.check_free(subnets.parse_subnet(text), [])


# --- building records ------------------------------------------------------------------------


@dataclass
class _Builder:
    r: Reader
    home: Path
    check_image: ImageCheck | None
    base: Path = field(init=False)
    project: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.base = self.r.file.parent

    def build(self, root: yaml.Node) -> EnvironmentSpec | None:
        parts = {name: (key_node, value) for name, key_node, value in self._top(root)}
        self.project = self._project(parts.get("name"))
        networks = self._networks(parts["networks"][1]) if "networks" in parts else ()
        if "vms" not in parts:
            self.r.problems.append(Problem(self.r.file, 1, "vms", "is missing: name at least one VM"))
            return None
        vms = self._vms(parts["vms"][1], {n.name: n for n in networks})
        self._check_across(vms)
        return EnvironmentSpec(self.r.file, self.project, networks, vms)

    def _top(self, root: yaml.Node) -> list[tuple[str, yaml.Node, yaml.Node]]:
        try:
            return list(self.r.mapping(root, "(top)", TOP_KEYS))
        except Skip:
            return []

    def _project(self, given: tuple[yaml.Node, yaml.Node] | None) -> str:
        if given is None:
            folder = self.base.name
            try:
                return check_name(folder, "project")
            except InvalidArgument:
                self.r.problems.append(Problem(self.r.file, 1, "name", f"is missing and the folder name '{folder}' is "
                                               "not a usable project name: add name: with a plain name"))
                return "project"
        try:
            return str(self.r.check(given[1], "name", lambda: check_name(self.r.text(given[1], "name"), "project")))
        except Skip:
            return "project"

    def _full_name(self, node: yaml.Node, key: str, name: str, what: str) -> str:
        return str(self.r.check(node, key, lambda: check_name(f"{self.project}-{check_name(name, what)}", what)))

    def _networks(self, node: yaml.Node) -> tuple[NetworkSpec, ...]:
        found: list[NetworkSpec] = []
        try:
            for name, key_node, value in self.r.mapping(node, "networks", None):
                try:
                    found.append(self._network(name, key_node, value))
                except Skip:
                    continue
        except Skip:
            pass
        return tuple(found)

    def _network(self, name: str, key_node: yaml.Node, value: yaml.Node) -> NetworkSpec:
        key = f"networks.{name}"
        full = self._full_name(key_node, key, name, "network")
        subnet = None
        if not is_null(value):
            for field_name, _, field_value in self.r.mapping(value, key, NETWORK_KEYS):
                text = self.r.text(field_value, f"{key}.{field_name}")
                subnet = self.r.check(field_value, f"{key}.subnet", partial(_free_subnet, text))
        return NetworkSpec(name, full, subnet, key_node.start_mark.line + 1)

    def _vms(self, node: yaml.Node, networks: dict[str, NetworkSpec]) -> tuple[VmSpec, ...]:
        found: list[VmSpec] = []
        try:
            entries = list(self.r.mapping(node, "vms", None))
        except Skip:
            return ()
        if not entries:
            self.r.problem(node, "vms", "names no VM")
        for name, key_node, value in entries:
            try:
                found.append(self._vm(name, key_node, value, networks))
            except Skip:
                continue
        return tuple(found)

    def _vm(self, name: str, key_node: yaml.Node, value: yaml.Node, networks: dict[str, NetworkSpec]) -> VmSpec:
        key = f"vms.{name}"
        full = self._full_name(key_node, key, name, "VM")
        fields: dict[str, Any] = {}
        given: set[str] = set()
        failed = False
        for option, _, node in self.r.mapping(value, key, VM_KEYS):
            given.add(option)
            try:
                fields.update(self._option(option, node, f"{key}.{option}", networks))
            except Skip:
                failed = True
        if "image" not in given:
            raise self.r.problem(key_node, key, "has no image: (GALLERY/DEFINITION[@VERSION])")
        if failed:  # reported already; the other VMs are still read
            raise Skip
        return VmSpec(name=name, full_name=full, line=key_node.start_mark.line + 1, **fields)

    def _option(self, option: str, node: yaml.Node, key: str, networks: dict[str, NetworkSpec]) -> dict[str, Any]:
        r = self.r
        if option == "image":
            return {"image": self._image(node, key)}
        if option == "cpus":
            return {"cpus": r.check(node, key, lambda: options.check_cpus(r.integer(node, key)))}
        if option == "memory":
            return {"memory_mib": r.check(node, key, lambda: options.check_memory(r.integer(node, key)))}
        if option == "disk_size":
            return {"disk_size": r.check(node, key, lambda: options.parse_size(r.text(node, key), "disk_size"))}
        if option in ("hostname", "admin_user"):
            return {option: self._identity(option, node, key)}
        if option in ("ssh_key", "user_data"):
            return self._file_option(option, node, key)
        if option in ("ignore_recommendations", "allow_revoked"):
            return {option: r.flag(node, key)}
        if option == "share":
            return {"shares": self._shares(node, key)}
        if option == "forward":
            return {"forwards": self._forwards(node, key)}
        if option == "network":
            return {"networks": self._attachments(node, key, networks)}
        return {"provision": self._provision(node, key)}

    def _image(self, node: yaml.Node, key: str) -> str:
        text = self.r.text(node, key)
        remote, sep, rest = text.partition(":")
        if sep and "/" not in remote:  # REMOTE:GALLERY/DEFINITION[@VERSION], as vm new takes it
            self.r.check(node, key, lambda: (check_name(remote, "remote"), parse_image_ref(rest)))
        else:
            self.r.check(node, key, lambda: parse_image_ref(text))
        if self.check_image is not None:
            self.r.check(node, key, lambda: self.check_image(text) if self.check_image else None)
        return text

    def _identity(self, option: str, node: yaml.Node, key: str) -> str:
        value = self.r.text(node, key)
        probe = {"hostname": "host", "admin_user": "admin", option: value}
        self.r.check(node, key, lambda: seed.validate(seed.Provisioning("iid-check", probe["hostname"],
                                                                        probe["admin_user"])))
        return value

    def _file_option(self, option: str, node: yaml.Node, key: str) -> dict[str, Any]:
        path = self.base / self.r.text(node, key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self.r.problem(node, key, f"cannot read {path}: {exc.strerror}") from None
        if option == "ssh_key":
            self.r.check(node, key, lambda: seed.validate_ssh_key(data.decode("utf-8", "replace").strip()))
            return {"ssh_key": path}
        return {"user_data": path, "user_data_digest": hashlib.sha256(data).hexdigest()}

    def _shares(self, node: yaml.Node, key: str) -> tuple[Share, ...]:
        found: list[Share] = []
        for text, item in self.r.texts(node, key):
            try:
                share = self.r.check(item, key, partial(shares.parse_share, text, base=self.base))
                found.append(self.r.check(item, key, partial(share_check.check_host, share, home=self.home)))
            except Skip:
                continue
        return self.r.check(node, key, lambda: shares.check_shares(tuple(found)))  # type: ignore[no-any-return]

    def _forwards(self, node: yaml.Node, key: str) -> tuple[Forward, ...]:
        found: list[Forward] = []
        for text, item in self.r.texts(node, key):
            try:
                found.append(self.r.check(item, key, partial(options.parse_forward, text)))
            except Skip:
                continue
        return self.r.check(node, key, lambda: options.check_forwards(tuple(found)))  # type: ignore[no-any-return]

    def _attachments(self, node: yaml.Node, key: str, networks: dict[str, NetworkSpec]) -> tuple[Attachment, ...]:
        found: list[Attachment] = []
        for text, item in self.r.texts(node, key):
            name, sep, address = text.partition(":")
            network = networks.get(name)
            if network is None:
                self.r.problem(item, key, f"network '{name}' is not one of networks: "
                                          f"({', '.join(networks) or 'there are none'})")
                continue
            if any(a.network == name for a in found):
                self.r.problem(item, key, f"network '{name}' is given twice: a VM has one NIC per network")
                continue
            if sep and network.subnet is None:
                self.r.problem(item, key, f"an address on '{name}' needs the network's subnet: give networks.{name}."
                                          "subnet")
                continue
            subnet = network.subnet
            try:
                parsed = None if subnet is None or not sep else \
                    self.r.check(item, key, partial(subnets.parse_address, address, subnet, network=name))
            except Skip:
                continue
            found.append(Attachment(name, parsed))
        return tuple(found)

    def _provision(self, node: yaml.Node, key: str) -> str:
        script = self.r.text(node, key)
        if not script.strip():
            raise self.r.problem(node, key, "is empty: give the script's lines, or leave provision out")
        if len(script.encode()) > MAX_PROVISION:
            raise self.r.problem(node, key, f"is longer than {MAX_PROVISION} bytes: put it in a file and run that")
        return script

    def _check_across(self, vms: tuple[VmSpec, ...]) -> None:
        """What no single VM can see: a host port forwarded twice, an address given to two VMs."""
        ports: dict[int, str] = {}
        addresses: dict[tuple[str, IPv4Address], str] = {}
        for vm in vms:
            for forward in vm.forwards:
                if forward.host in ports:
                    self.r.problems.append(Problem(self.r.file, vm.line, f"vms.{vm.name}.forward",
                                                   f"host port {forward.host} is also forwarded by VM "
                                                   f"'{ports[forward.host]}'"))
                ports.setdefault(forward.host, vm.name)
            for attachment in vm.networks:
                if attachment.address is None:
                    continue
                spot = (attachment.network, attachment.address)
                if spot in addresses:
                    self.r.problems.append(Problem(self.r.file, vm.line, f"vms.{vm.name}.network",
                                                   f"address {attachment.address} on '{attachment.network}' is also "
                                                   f"VM '{addresses[spot]}''s"))
                addresses.setdefault(spot, vm.name)
