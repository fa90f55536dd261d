"""ACCEPT and REJECT: a flow replayed against an interface's security groups and network ACL.

The inputs are what Tencent Cloud itself prints, so that real policies can be exported and
replayed (SPEC.md, "Policy"):

* security groups: the output of DescribeSecurityGroupPolicies (``{"Response":
  {"SecurityGroupPolicySet": {"Ingress": [...], "Egress": [...]}}}``, the same without the
  ``Response`` wrapper as tccli prints it, or the set alone), one file per group, in the
  order of the groups' priority;
* the network ACL: the output of DescribeNetworkAcls holding one ACL, or one entry of its
  ``NetworkAclSet``;
* templates the rules refer to: the output of DescribeAddressTemplates,
  DescribeAddressTemplateGroups, DescribeServiceTemplates and DescribeServiceTemplateGroups.
  A rule that refers to another security group matches that group's members' addresses,
  given as an ``AddressTemplateSet`` entry whose ``AddressTemplateId`` is the group's ID;
* the interface's own addresses, which tell ingress from egress.

Evaluation: rules in order, the first match decides, no match denies. Ingress is judged by
the ACL, then the security groups; egress by the security groups, then the ACL. The ACL is
stateless; the security groups are stateful: the reply to a flow they let through passes them
in the other direction (TCP, UDP and SCTP: the reverse 5-tuple; ICMP: the reply type with the
same identifier; other protocols: the reverse address pair). A reply to a request that was
rejected never existed in the cloud: it is left out of the records (and counted).

Nothing here imports click; errors are :class:`~flowlog.core.errors.ConfigError` with one
line naming the file and the entry.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .errors import ConfigError
from .records import ACTION_ACCEPT, ACTION_REJECT, KIND_OK, RecordBatch

#: Protocol names the cloud prints, to IANA numbers (None: every protocol).
PROTOCOLS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "GRE": 47, "ALL": None}
PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 47: "GRE", None: "ALL"}
#: Protocols whose rules may name ports.
PORTED = (6, 17)
#: ICMP and ICMPv6 request types and the type of their reply (same identifier).
ICMP_REPLY = {1: {8: 0, 13: 14, 15: 16, 17: 18, 42: 43}, 58: {128: 129, 160: 161}}
#: Idle time (seconds) after which a security group forgets a connection. Tencent Cloud does
#: not document its own value; 15 minutes outlasts the idle gaps of ordinary traffic.
DEFAULT_CONNTRACK_TIMEOUT = 900
TRAFFIC_TYPES = ("accept", "reject", "all")

_M64 = (1 << 64) - 1
_FULL = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_NS = 1_000_000_000


# -- reading the cloud's JSON ------------------------------------------------------------------

def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _unwrap(doc, path: str):
    """The API's ``{"Response": {...}}`` to its content; an error response is an error here too."""
    if isinstance(doc, dict) and isinstance(doc.get("Response"), dict):
        doc = doc["Response"]
    if isinstance(doc, dict) and isinstance(doc.get("Error"), dict):
        err = doc["Error"]
        raise ConfigError(f"{path}: the file holds an API error, not a policy: "
                          f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": "))
    return doc


def _given(value) -> bool:
    """The cloud prints absent optional fields as missing, null or an empty string."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(value) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)


class _Where:
    """Names an entry in error messages: ``sg.json: Ingress[2]``."""

    def __init__(self, path: str, entry: str):
        self.path, self.entry = path, entry

    def __str__(self) -> str:
        return f"{self.path}: {self.entry}" if self.entry else self.path

    def sub(self, part: str) -> "_Where":
        return _Where(self.path, f"{self.entry}.{part}" if self.entry else part)

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self}: {message}")


def _protocol(value, where: _Where) -> int | None:
    if not isinstance(value, str) or value.strip().upper() not in PROTOCOLS:
        raise where.error(f"bad protocol {_text(value)} (TCP, UDP, ICMP, ICMPv6, GRE or ALL)")
    return PROTOCOLS[value.strip().upper()]


def _ports(value, where: _Where) -> tuple[tuple[int, int], ...] | None:
    """``22``, ``"22"``, ``"80,443"``, ``"8000-8010"``, ``"ALL"`` (or nothing): ranges, None for every port."""
    if not _given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise where.error(f"bad port {_text(value)}")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise where.error(f"bad port {_text(value)} (0 to 65535)")
        return ((value, value),)
    text = value.strip()
    if text.upper() == "ALL":
        return None
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        lo, hi = lo.strip(), (hi.strip() if sep else lo.strip())
        if not (lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit()):
            raise where.error(f"bad port {_text(value)}")
        a, b = int(lo), int(hi)
        if not (0 <= a <= 65535 and 0 <= b <= 65535) or a > b:
            raise where.error(f"bad port {_text(value)} (ports are 0 to 65535, ranges low-high)")
        ranges.append((a, b))
    return tuple(ranges)


@dataclass(frozen=True)
class Service:
    """A protocol and its destination ports (None: every protocol / every port)."""

    proto: int | None
    ports: tuple[tuple[int, int], ...] | None


def _service(proto_value, port_value, where: _Where) -> Service:
    proto = _protocol(proto_value, where)
    ports = _ports(port_value, where)
    if ports is not None and proto not in PORTED:
        raise where.error(f"port {_text(port_value)} with protocol {PROTOCOL_NAMES[proto]}: "
                          f"ports go with TCP and UDP only")
    return Service(proto, ports)


def _service_text(value, where: _Where) -> Service:
    """A service template's entry: ``tcp:80``, ``udp:53,5353``, ``tcp:8000-8010``, ``tcp:all``, ``icmp``."""
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"bad service {_text(value)}")
    proto, sep, ports = value.partition(":")
    return _service(proto, ports if sep else None, where)


def _network(value, where: _Where, what: str = "CIDR") -> tuple[int, int, int]:
    """A CIDR block (host bits allowed, as the cloud prints them) or a single address: (family, first, last)."""
    if not isinstance(value, str):
        raise where.error(f"bad {what} {_text(value)}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise where.error(f"bad {what} {_text(value)}") from None
    return (net.version, int(net.network_address), int(net.broadcast_address))


def _address_text(value, where: _Where) -> tuple[int, int, int]:
    """An address template's entry: an address, a CIDR block, or a range ``10.0.0.1-10.0.0.100``."""
    if isinstance(value, str) and "-" in value:
        a, _, b = value.partition("-")
        try:
            first, last = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
        except ValueError:
            raise where.error(f"bad address range {_text(value)}") from None
        if first.version != last.version or int(first) > int(last):
            raise where.error(f"bad address range {_text(value)}")
        return (first.version, int(first), int(last))
    return _network(value, where, "address")


def parse_addresses(values, what: str = "--interface-ip") -> set[tuple[int, int, int]]:
    """Addresses (text) as the records' (family, high 64 bits, low 64 bits)."""
    out = set()
    for v in values:
        try:
            ip = ipaddress.ip_address(str(v).strip().split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"{what} {str(v)!r}: not an IP address") from None
        n = int(ip)
        out.add((4, 0, n) if ip.version == 4 else (6, n >> 64, n & _M64))
    return out


# -- templates ---------------------------------------------------------------------------------

class Templates:
    """Address and service templates (and groups of them) that rules may refer to."""

    def __init__(self):
        self.addresses: dict[str, tuple] = {}          # ipm-… or sg-… -> ranges
        self.address_groups: dict[str, tuple] = {}     # ipmg-… -> member IDs
        self.services: dict[str, tuple] = {}           # ppm-… -> services
        self.service_groups: dict[str, tuple] = {}     # ppmg-… -> member IDs

    def load(self, path: str) -> None:
        doc = _read_json(path)
        docs = doc if isinstance(doc, list) else [doc]
        found = False
        for k, d in enumerate(docs):
            d = _unwrap(d, path)
            base = _Where(path, f"[{k}]" if isinstance(doc, list) else "")
            if not isinstance(d, dict):
                raise base.error("not a JSON object")
            for key, reader in (("AddressTemplateSet", self._address_template),
                                ("AddressTemplateGroupSet", self._address_group),
                                ("ServiceTemplateSet", self._service_template),
                                ("ServiceTemplateGroupSet", self._service_group)):
                if key in d:
                    found = True
                    items = d[key]
                    if not isinstance(items, list):
                        raise base.sub(key).error("not a list")
                    for i, item in enumerate(items):
                        where = base.sub(f"{key}[{i}]")
                        if not isinstance(item, dict):
                            raise where.error("not a JSON object")
                        reader(item, where)
        if not found:
            raise ConfigError(f"{path}: no AddressTemplateSet, AddressTemplateGroupSet, ServiceTemplateSet or "
                              f"ServiceTemplateGroupSet: give the output of DescribeAddressTemplates, "
                              f"DescribeAddressTemplateGroups, DescribeServiceTemplates or "
                              f"DescribeServiceTemplateGroups")

    @staticmethod
    def _id(item: dict, keys, where: _Where) -> str:
        for key in keys:
            if _given(item.get(key)):
                if not isinstance(item[key], str):
                    raise where.sub(key).error(f"bad ID {_text(item[key])}")
                return item[key].strip()
        raise where.error(f"no {' or '.join(keys)}")

    @staticmethod
    def _put(table: dict, ident: str, value, where: _Where) -> None:
        if ident in table and table[ident] != value:
            raise where.error(f"{ident!r} is given twice, with different contents")
        table[ident] = value

    @staticmethod
    def _entries(item: dict, plain: str, extra: str, field_name: str, where: _Where):
        """The entries of ``plain`` (strings) or else ``extra`` (objects with ``field_name``), with where they are."""
        if isinstance(item.get(plain), list) and item[plain]:
            return [(v, where.sub(f"{plain}[{i}]")) for i, v in enumerate(item[plain])]
        if isinstance(item.get(extra), list) and item[extra]:
            out = []
            for i, v in enumerate(item[extra]):
                w = where.sub(f"{extra}[{i}]")
                if not isinstance(v, dict):
                    raise w.error("not a JSON object")
                out.append((v.get(field_name), w.sub(field_name)))
            return out
        if plain in item and not isinstance(item[plain], list):
            raise where.sub(plain).error("not a list")
        return []

    def _address_template(self, item: dict, where: _Where) -> None:
        ident = self._id(item, ("AddressTemplateId", "SecurityGroupId"), where)
        entries = self._entries(item, "AddressSet", "AddressExtraSet", "Address", where)
        self._put(self.addresses, ident, tuple(_address_text(v, w) for v, w in entries), where)

    def _members(self, item: dict, ids: str, objects: str, id_key: str, where: _Where) -> tuple[str, ...]:
        if isinstance(item.get(ids), list):
            members = item[ids]
            for i, m in enumerate(members):
                if not isinstance(m, str) or not m.strip():
                    raise where.sub(f"{ids}[{i}]").error(f"bad ID {_text(m)}")
            return tuple(m.strip() for m in members)
        if isinstance(item.get(objects), list):
            return tuple(self._id(o if isinstance(o, dict) else {}, (id_key,), where.sub(f"{objects}[{i}]"))
                         for i, o in enumerate(item[objects]))
        raise where.error(f"no {ids}")

    def _address_group(self, item: dict, where: _Where) -> None:
        ident = self._id(item, ("AddressTemplateGroupId",), where)
        members = self._members(item, "AddressTemplateIdSet", "AddressTemplateSet", "AddressTemplateId", where)
        self._put(self.address_groups, ident, members, where)

    def _service_template(self, item: dict, where: _Where) -> None:
        ident = self._id(item, ("ServiceTemplateId",), where)
        entries = self._entries(item, "ServiceSet", "ServiceExtraSet", "Service", where)
        self._put(self.services, ident, tuple(_service_text(v, w) for v, w in entries), where)

    def _service_group(self, item: dict, where: _Where) -> None:
        ident = self._id(item, ("ServiceTemplateGroupId",), where)
        members = self._members(item, "ServiceTemplateIdSet", "ServiceTemplateSet", "ServiceTemplateId", where)
        self._put(self.service_groups, ident, members, where)
        for i, o in enumerate(item.get("ServiceTemplateSet") or []):   # members printed with their contents
            if isinstance(o, dict) and (o.get("ServiceSet") or o.get("ServiceExtraSet")):
                self._service_template(o, where.sub(f"ServiceTemplateSet[{i}]"))

    # -- resolving a rule's references
    def address_ranges(self, key: str, ident: str, where: _Where) -> tuple:
        hint = " with --templates FILE"
        if key == "AddressId":
            if ident not in self.addresses:
                raise where.error(f"AddressTemplate {key} {ident!r} is not defined: give the output of "
                                  f"DescribeAddressTemplates{hint}")
            return self.addresses[ident]
        if ident not in self.address_groups:
            raise where.error(f"AddressTemplate {key} {ident!r} is not defined: give the output of "
                              f"DescribeAddressTemplateGroups{hint}")
        out = []
        for m in self.address_groups[ident]:
            if m not in self.addresses:
                raise where.error(f"address template {m!r} (in group {ident!r}) is not defined: give the output "
                                  f"of DescribeAddressTemplates{hint}")
            out.extend(self.addresses[m])
        return tuple(out)

    def group_members(self, ident: str, where: _Where) -> tuple:
        if ident not in self.addresses:
            raise where.error(f"refers to security group {ident!r}: give its members' addresses with --templates "
                              f"FILE, as an AddressTemplateSet entry whose AddressTemplateId is {ident!r}")
        return self.addresses[ident]

    def service_list(self, key: str, ident: str, where: _Where) -> tuple:
        hint = " with --templates FILE"
        if key == "ServiceId":
            if ident not in self.services:
                raise where.error(f"ServiceTemplate {key} {ident!r} is not defined: give the output of "
                                  f"DescribeServiceTemplates{hint}")
            return self.services[ident]
        if ident not in self.service_groups:
            raise where.error(f"ServiceTemplate {key} {ident!r} is not defined: give the output of "
                              f"DescribeServiceTemplateGroups{hint}")
        out = []
        for m in self.service_groups[ident]:
            if m not in self.services:
                raise where.error(f"service template {m!r} (in group {ident!r}) is not defined: give the output "
                                  f"of DescribeServiceTemplates{hint}")
            out.extend(self.services[m])
        return tuple(out)


# -- rules -------------------------------------------------------------------------------------

@dataclass
class Rule:
    """One compiled rule: it matches a flow whose remote address and service it covers."""

    label: str                   # the reject-reason it gives: "sg:ingress:3", "acl:egress:0"
    accept: bool
    services: tuple[Service, ...]
    ranges: tuple[tuple[int, int, int], ...]     # remote addresses: (family, first, last)
    text: str                    # for people (flowlog explain)


def _reference(value, keys: tuple[str, str], where: _Where):
    """``{"AddressId": "ipm-…"}`` and the like: (key, ID), or None when absent or empty."""
    if not _given(value):
        return None
    if not isinstance(value, dict):
        raise where.error("not a JSON object")
    given = [(k, value[k]) for k in keys if _given(value.get(k))]
    if len(given) > 1:
        raise where.error(f"both {keys[0]} and {keys[1]}")
    if not given:
        return None
    k, v = given[0]
    if not isinstance(v, str):
        raise where.sub(k).error(f"bad ID {_text(v)}")
    return k, v.strip()


def _action(value, where: _Where) -> bool:
    if not isinstance(value, str) or value.strip().upper() not in ("ACCEPT", "DROP"):
        raise where.error(f"bad Action {_text(value)} (ACCEPT or DROP)")
    return value.strip().upper() == "ACCEPT"


def _describe(e: dict, services_text: str, address_text: str) -> str:
    desc = e.get("PolicyDescription") or e.get("Description") or ""
    text = f"{str(e.get('Action', '')).upper()} {services_text} {address_text}"
    return f"{text} ({desc})" if isinstance(desc, str) and desc.strip() else text


def _sg_rule(e, where: _Where, label: str, templates: Templates) -> Rule:
    if not isinstance(e, dict):
        raise where.error("not a JSON object")
    accept = _action(e.get("Action"), where)
    svc_ref = _reference(e.get("ServiceTemplate"), ("ServiceId", "ServiceGroupId"), where.sub("ServiceTemplate"))
    if svc_ref is not None:
        if _given(e.get("Protocol")) or _given(e.get("Port")):
            raise where.error("both Protocol/Port and a ServiceTemplate")
        services = templates.service_list(*svc_ref, where)
        services_text = f"ServiceTemplate {svc_ref[1]}"
    else:
        if not _given(e.get("Protocol")):
            raise where.error("no Protocol and no ServiceTemplate")
        services = (_service(e.get("Protocol"), e.get("Port"), where),)
        services_text = f"{str(e['Protocol']).upper()} {e.get('Port') if _given(e.get('Port')) else 'ALL'}"
    addr_ref = _reference(e.get("AddressTemplate"), ("AddressId", "AddressGroupId"), where.sub("AddressTemplate"))
    group = e.get("SecurityGroupId")
    blocks = [(k, e[k]) for k in ("CidrBlock", "Ipv6CidrBlock") if _given(e.get(k))]
    kinds = bool(blocks) + (addr_ref is not None) + _given(group)
    if kinds > 1:
        raise where.error("more than one of CidrBlock/Ipv6CidrBlock, SecurityGroupId and AddressTemplate")
    if addr_ref is not None:
        ranges = templates.address_ranges(*addr_ref, where)
        address_text = f"AddressTemplate {addr_ref[1]}"
    elif _given(group):
        if not isinstance(group, str):
            raise where.sub("SecurityGroupId").error(f"bad ID {_text(group)}")
        ranges = templates.group_members(group.strip(), where)
        address_text = f"SecurityGroup {group.strip()}"
    elif blocks:
        ranges = tuple(_network(v, where) for _, v in blocks)
        address_text = ",".join(str(v).strip() for _, v in blocks)
    else:
        raise where.error("no address: CidrBlock, Ipv6CidrBlock, SecurityGroupId or AddressTemplate")
    return Rule(label, accept, services, ranges, _describe(e, services_text, address_text))


def _acl_rule(e, where: _Where, label: str) -> Rule:
    if not isinstance(e, dict):
        raise where.error("not a JSON object")
    accept = _action(e.get("Action"), where)
    if not _given(e.get("Protocol")):
        raise where.error("no Protocol")
    service = _service(e.get("Protocol"), e.get("Port"), where)
    blocks = [(k, e[k]) for k in ("CidrBlock", "Ipv6CidrBlock") if _given(e.get(k))]
    if not blocks:
        raise where.error("no address: CidrBlock or Ipv6CidrBlock")
    ranges = tuple(_network(v, where) for _, v in blocks)
    services_text = f"{str(e['Protocol']).upper()} {e.get('Port') if _given(e.get('Port')) else 'ALL'}"
    return Rule(label, accept, (service,), ranges,
                _describe(e, services_text, ",".join(str(v).strip() for _, v in blocks)))


def _ordered(entries: list, key: str) -> list[int]:
    """Positions in evaluation order: by ``key`` (PolicyIndex, Priority) when every entry has one, else as listed."""
    values = [e.get(key) if isinstance(e, dict) else None for e in entries]
    if entries and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sorted(range(len(entries)), key=lambda i: values[i])
    return list(range(len(entries)))


def _entry_list(container: dict, key: str, where: _Where) -> list:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise where.sub(key).error("not a list")
    return value


def load_security_group(path: str, templates: Templates, name: str = "sg") -> dict[str, list[Rule]]:
    """One group's rules by direction (``ingress``, ``egress``), in evaluation order."""
    doc = _unwrap(_read_json(path), path)
    if isinstance(doc, dict) and "SecurityGroupPolicySet" in doc:
        s = doc["SecurityGroupPolicySet"]
    elif isinstance(doc, dict) and ("Ingress" in doc or "Egress" in doc):
        s = doc
    else:
        raise ConfigError(f"{path}: not the output of DescribeSecurityGroupPolicies: no SecurityGroupPolicySet "
                          f"with Ingress/Egress rules")
    base = _Where(path, "")
    if not isinstance(s, dict) or not ("Ingress" in s or "Egress" in s):
        raise ConfigError(f"{path}: SecurityGroupPolicySet has no Ingress or Egress rules")
    out = {}
    for key, direction in (("Ingress", "ingress"), ("Egress", "egress")):
        entries = _entry_list(s, key, base)
        rules = []
        for i in _ordered(entries, "PolicyIndex"):
            e = entries[i]
            index = e.get("PolicyIndex") if isinstance(e, dict) else None
            index = index if isinstance(index, int) and not isinstance(index, bool) else i
            rules.append(_sg_rule(e, _Where(path, f"{key}[{i}]"), f"{name}:{direction}:{index}", templates))
        out[direction] = rules
    return out


def load_network_acl(path: str) -> dict[str, list[Rule]]:
    """The ACL's rules by direction, in evaluation order."""
    doc = _unwrap(_read_json(path), path)
    if isinstance(doc, dict) and "NetworkAclSet" in doc:
        acls = doc["NetworkAclSet"]
        if not isinstance(acls, list) or not acls:
            raise ConfigError(f"{path}: NetworkAclSet holds no ACL")
        if len(acls) > 1:
            ids = ", ".join(str(a.get("NetworkAclId", "?")) for a in acls if isinstance(a, dict))
            raise ConfigError(f"{path}: NetworkAclSet holds {len(acls)} ACLs ({ids}): give the one of the "
                              f"interface's subnet, e.g. jq '.Response.NetworkAclSet[0]'")
        acl, base = acls[0], _Where(path, "NetworkAclSet[0]")
    elif isinstance(doc, dict) and ("IngressEntries" in doc or "EgressEntries" in doc):
        acl, base = doc, _Where(path, "")
    else:
        raise ConfigError(f"{path}: not the output of DescribeNetworkAcls: no NetworkAclSet with "
                          f"IngressEntries/EgressEntries")
    if not isinstance(acl, dict):
        raise base.error("not a JSON object")
    if str(acl.get("NetworkAclType", "")).upper() == "QUINTUPLE":
        raise base.error("a QUINTUPLE ACL: its rules are the output of DescribeNetworkAclQuintupleEntries, "
                         "which flowlog does not read")
    if "IngressEntries" not in acl and "EgressEntries" not in acl:
        raise base.error("no IngressEntries or EgressEntries (query with NeedNetworkAclEntryInfo)")
    out = {}
    for key, direction in (("IngressEntries", "ingress"), ("EgressEntries", "egress")):
        entries = _entry_list(acl, key, base)
        out[direction] = [_acl_rule(entries[i], base.sub(f"{key}[{i}]"), f"acl:{direction}:{i}")
                          for i in _ordered(entries, "Priority")]
    return out


# -- matching ----------------------------------------------------------------------------------

def _in_ranges(ranges, fam, hi, lo) -> np.ndarray:
    m = np.zeros(len(fam), bool)
    for f, a, b in ranges:
        fm = fam == f
        if a == 0 and b == _FULL[f]:
            m |= fm
            continue
        ah, al, bh, bl = (np.uint64(a >> 64), np.uint64(a & _M64), np.uint64(b >> 64), np.uint64(b & _M64))
        ge = (hi > ah) | ((hi == ah) & (lo >= al))
        le = (hi < bh) | ((hi == bh) & (lo <= bl))
        m |= fm & ge & le
    return m


def _in_services(services, proto, dport) -> np.ndarray:
    m = np.zeros(len(proto), bool)
    for s in services:
        if s.proto is None:
            return np.ones(len(proto), bool)
        pm = proto == s.proto
        if s.ports is not None:
            pp = np.zeros(len(proto), bool)
            for a, b in s.ports:
                pp |= (dport >= a) & (dport <= b)
            pm &= pp
        m |= pm
    return m


def _first_match(rules: list[Rule], fam, hi, lo, proto, dport) -> np.ndarray:
    """Per row, the position of the first rule that matches (remote address hi/lo), or -1."""
    n = len(fam)
    out = np.full(n, -1, np.int64)
    rows = np.arange(n)
    for k, rule in enumerate(rules):
        if not len(rows):
            break
        m = (_in_services(rule.services, proto[rows], dport[rows])
             & _in_ranges(rule.ranges, fam[rows], hi[rows], lo[rows]))
        out[rows[m]] = k
        rows = rows[~m]
    return out


class Step(NamedTuple):
    """One step of a flow's evaluation, for people (flowlog explain)."""

    stage: str          # "network ACL", "security group"
    verdict: str        # ACCEPT, REJECT
    rule: str           # the rule that decided, or why no rule did


@dataclass
class Judgement:
    """What the policy did with one flow."""

    direction: str | None            # "ingress", "egress", None (not the interface's)
    action: str | None               # "ACCEPT", "REJECT", None: a reply that never existed (not written)
    reason: str | None               # reject-reason
    steps: list[Step] = field(default_factory=list)


class Policy:
    """An interface's security groups and network ACL, with the groups' connection state.

    ``groups``: each group's rules by direction, in priority order; ``acl``: the ACL's rules by
    direction, or None (no ACL: not evaluated). ``addresses``: the interface's own addresses
    as (family, hi, lo). State is kept per interface index and carries across batches.
    """

    def __init__(self, groups: list[dict[str, list[Rule]]], acl: dict[str, list[Rule]] | None,
                 addresses: set[tuple[int, int, int]], conntrack_timeout: float = DEFAULT_CONNTRACK_TIMEOUT):
        if not addresses:
            raise ConfigError("a policy needs the interface's addresses: give --interface-ip ADDR (repeatable)")
        if not conntrack_timeout > 0:
            raise ConfigError("--conntrack-timeout must be more than 0 seconds")
        self.sg = ({d: [r for g in groups for r in g[d]] for d in ("ingress", "egress")} if groups else None)
        self.acl = acl
        self.addresses = set(addresses)
        self.timeout_ns = int(conntrack_timeout * _NS)
        #: flow key -> connection [original key, reply key, expiry (ns), passed the group, rejected]
        self._conns: dict[tuple, list] = {}
        self._sweep_at = 4096
        self.counters = dict(judged_flows=0, rejected_flows=0, suppressed_flows=0, suppressed_packets=0,
                             suppressed_bytes=0, unjudged_flows=0, unjudged_packets=0)

    # -- flows of a batch
    def apply(self, batch: RecordBatch) -> RecordBatch:
        """The batch with its flows judged: ``action`` and ``reasons`` set, replies that never existed left out."""
        n = len(batch)
        action = np.zeros(n, np.int8)
        reasons: list = [None] * n
        keep = np.ones(n, bool)
        rows = np.flatnonzero(batch.kind == KIND_OK)
        if not len(rows):
            batch.action, batch.reasons = action, reasons
            return batch
        fam, shi, slo, dhi, dlo = (batch.fam[rows], batch.shi[rows], batch.slo[rows], batch.dhi[rows],
                                   batch.dlo[rows])
        iface = batch.iface[rows]
        src_own = np.zeros(len(rows), bool)
        dst_own = np.zeros(len(rows), bool)
        for i in np.unique(iface).tolist():
            sel = iface == i
            for f, h, l in self.addresses | set(batch.addresses.get(i, ())):
                h, l = np.uint64(h), np.uint64(l)
                src_own |= sel & (fam == f) & (shi == h) & (slo == l)
                dst_own |= sel & (fam == f) & (dhi == h) & (dlo == l)
        egress = src_own
        judged = src_own | dst_own
        c = self.counters
        c["unjudged_flows"] += int((~judged).sum())
        c["unjudged_packets"] += int(batch.packets[rows[~judged]].sum())
        # the rules' verdicts hold whatever the state: worked out for all rows at once
        proto, dport = batch.proto[rows], batch.dport[rows]
        rhi, rlo = np.where(egress, dhi, shi), np.where(egress, dlo, slo)
        acl_hit = np.full(len(rows), -1, np.int64)
        sg_hit = np.full(len(rows), -1, np.int64)
        for direction, sel in (("egress", egress), ("ingress", judged & ~egress)):
            idx = np.flatnonzero(sel)
            if not len(idx):
                continue
            args = (fam[idx], rhi[idx], rlo[idx], proto[idx], dport[idx])
            if self.acl is not None:
                acl_hit[idx] = _first_match(self.acl[direction], *args)
            if self.sg is not None:
                sg_hit[idx] = _first_match(self.sg[direction], *args)
        # then the state, flow by flow in the order they were first seen
        pos = np.flatnonzero(judged)
        pos = pos[np.lexsort((batch.fns[rows[pos]], batch.fs[rows[pos]]))]
        r = rows[pos]
        cols = [a.tolist() for a in (r, batch.iface[r], batch.fam[r], batch.shi[r], batch.slo[r], batch.dhi[r],
                                     batch.dlo[r], batch.proto[r], batch.sport[r], batch.dport[r], batch.fs[r],
                                     batch.fns[r], batch.ls[r], batch.lns[r], egress[pos], acl_hit[pos],
                                     sg_hit[pos], batch.packets[r], batch.bytes[r])]
        newest = 0
        for (row, i, f, sh, sl, dh, dl, p, sp, dp, fs, fns, ls, lns, eg, ah, gh, pk, by) in zip(*cols):
            t0 = fs * _NS + fns
            newest = max(newest, t0)
            verdict, why = self._step(i, f, sh, sl, dh, dl, p, sp, dp, t0, ls * _NS + lns, eg, ah, gh)
            if verdict is None:
                keep[row] = False
                c["suppressed_flows"] += 1
                c["suppressed_packets"] += pk
                c["suppressed_bytes"] += max(by, 0)
                continue
            c["judged_flows"] += 1
            if verdict == ACTION_REJECT:
                c["rejected_flows"] += 1
                action[row] = ACTION_REJECT
                reasons[row] = why
        if len(self._conns) > self._sweep_at:
            self._sweep(newest)
        batch.action, batch.reasons = action, reasons
        return batch if keep.all() else batch.select(keep)

    def _sweep(self, now: int) -> None:
        for key in [k for k, conn in self._conns.items() if conn[2] < now]:
            del self._conns[key]
        self._sweep_at = max(4096, 2 * len(self._conns))

    # -- one flow
    def _step(self, iface, fam, shi, slo, dhi, dlo, proto, sport, dport, t0, t1, egress, acl_hit, sg_hit,
              steps: list | None = None):
        """Judge one flow with the rules' verdicts ``acl_hit``/``sg_hit`` and the groups' state.

        Returns (ACTION_ACCEPT or ACTION_REJECT, reject-reason), or (None, None) for the reply to a
        rejected request.
        """
        icmp = proto in (1, 58)
        key = (iface, fam, shi, slo, dhi, dlo, proto, sport, dport >> 8 if icmp else dport)
        conn = self._conns.get(key)
        if conn is not None and t0 > conn[2]:                  # idle too long: forgotten
            self._conns.pop(conn[0], None)
            self._conns.pop(conn[1], None)
            conn = None
        reply = conn is not None and key == conn[1]
        if reply and conn[4]:
            if steps is not None:
                steps.append(Step("state", "-", "the reply to a rejected request: it never existed"))
            return None, None
        by_state = reply and conn[3]
        direction = "egress" if egress else "ingress"
        stages = ("sg", "acl") if egress else ("acl", "sg")
        accepted, why, passed_group = True, None, self.sg is None
        for stage in stages:
            if stage == "sg":
                if self.sg is None:
                    continue
                if by_state:
                    passed_group = True
                    if steps is not None:
                        steps.append(Step("security group", "ACCEPT", "state: the reply to a flow it let through"))
                    continue
                rules, hit, name = self.sg[direction], sg_hit, "security group"
            else:
                if self.acl is None:
                    continue
                rules, hit, name = self.acl[direction], acl_hit, "network ACL"
            ok = hit >= 0 and rules[hit].accept
            if steps is not None:
                steps.append(Step(name, "ACCEPT" if ok else "REJECT",
                                  f"{rules[hit].label}: {rules[hit].text}" if hit >= 0
                                  else "no rule matched: denied by default"))
            if not ok:
                accepted = False
                why = rules[hit].label if hit >= 0 else f"{stage}:{direction}:default"
                break
            if stage == "sg":
                passed_group = True
        expiry = t1 + self.timeout_ns
        if conn is None:
            rkey = self._reply_key(iface, fam, shi, slo, dhi, dlo, proto, sport, dport)
            if rkey is not None and rkey != key:
                conn = [key, rkey, expiry, passed_group, not accepted]
                self._conns[key] = conn
                self._conns[rkey] = conn
        else:
            conn[2] = max(conn[2], expiry)
            if not reply:                                      # the request again, in a later window
                conn[3], conn[4] = passed_group, not accepted
        return (ACTION_ACCEPT, None) if accepted else (ACTION_REJECT, why)

    @staticmethod
    def _reply_key(iface, fam, shi, slo, dhi, dlo, proto, sport, dport):
        if proto in (1, 58):
            rtype = ICMP_REPLY[proto].get(dport >> 8)
            return None if rtype is None else (iface, fam, dhi, dlo, shi, slo, proto, sport, rtype)
        return (iface, fam, dhi, dlo, shi, slo, proto, dport, sport)

    def judge(self, src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, t_first: float = 0.0,
              t_last: float | None = None, iface: int = 0) -> Judgement:
        """Judge one flow (as :meth:`apply` judges a record), keeping the state it leaves; with the steps taken."""
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if a.version != b.version:
            raise ConfigError(f"{src} and {dst} are not of one address family")
        fam = a.version
        (sh, sl), (dh, dl) = ((int(x) >> 64, int(x) & _M64) for x in (a, b))
        own = self.addresses
        if (fam, sh, sl) in own:
            direction = "egress"
        elif (fam, dh, dl) in own:
            direction = "ingress"
        else:
            return Judgement(None, "ACCEPT", None, [Step("direction", "-", "neither address is the interface's: "
                                                                           "not judged")])
        egress = direction == "egress"
        rh, rl = (dh, dl) if egress else (sh, sl)
        args = (np.array([fam]), np.array([rh], np.uint64), np.array([rl], np.uint64), np.array([proto]),
                np.array([dport]))
        acl_hit = int(_first_match(self.acl[direction], *args)[0]) if self.acl is not None else -1
        sg_hit = int(_first_match(self.sg[direction], *args)[0]) if self.sg is not None else -1
        t0 = int(round(t_first * _NS))
        t1 = t0 if t_last is None else int(round(t_last * _NS))
        steps: list[Step] = []
        verdict, why = self._step(iface, fam, sh, sl, dh, dl, proto, sport, dport, t0, t1, egress, acl_hit, sg_hit,
                                  steps)
        action = None if verdict is None else ("REJECT" if verdict == ACTION_REJECT else "ACCEPT")
        return Judgement(direction, action, why, steps)

    @staticmethod
    def reply_of(src: str, dst: str, proto: int, sport: int, dport: int):
        """The reply a flow would get, as (src, dst, proto, sport, dport), or None (ICMP messages with no reply)."""
        if proto in (1, 58):
            rtype = ICMP_REPLY[proto].get(dport >> 8)
            return None if rtype is None else (dst, src, proto, sport, rtype << 8)
        return (dst, src, proto, dport, sport)


def load_policy(sg_files=(), acl_file: str | None = None, template_files=(), interface_ips=(),
                conntrack_timeout: float = DEFAULT_CONNTRACK_TIMEOUT) -> Policy | None:
    """The policy the options describe, or None when no security group or ACL is given."""
    if not sg_files and not acl_file:
        if template_files:
            raise ConfigError("--templates goes with --sg or --acl")
        return None
    addresses = parse_addresses(interface_ips)
    if not addresses:
        raise ConfigError("--sg and --acl need the interface's addresses: give --interface-ip ADDR (repeatable); "
                          "traffic to them is ingress, from them egress")
    templates = Templates()
    for path in template_files:
        templates.load(path)
    several = len(sg_files) > 1
    groups = [load_security_group(p, templates, f"sg{k + 1}" if several else "sg") for k, p in enumerate(sg_files)]
    acl = load_network_acl(acl_file) if acl_file else None
    return Policy(groups, acl, addresses, conntrack_timeout)


def filter_traffic(batch: RecordBatch, traffic_type: str) -> RecordBatch:
    """Only the records ``--traffic-type`` asks for; NODATA and SKIPDATA records always stay."""
    if traffic_type == "all" or not len(batch):
        return batch
    want = ACTION_ACCEPT if traffic_type == "accept" else ACTION_REJECT
    keep = (batch.kind != KIND_OK) | (batch.action == want)
    return batch if keep.all() else batch.select(keep)


__all__ = ["Policy", "Judgement", "Step", "Rule", "Templates", "load_policy", "load_security_group",
           "load_network_acl", "parse_addresses", "filter_traffic", "DEFAULT_CONNTRACK_TIMEOUT", "TRAFFIC_TYPES",
           "PROTOCOLS", "ICMP_REPLY"]
