"""``flowlog explain``: one flow and its reply through the security groups and network ACL, step by step.

Also the options that give a policy (``--sg``, ``--acl``, ``--templates``, ``--interface-ip``),
shared with ``flowlog capture``.
"""

from __future__ import annotations

import ipaddress

import click

from flowlog.core.errors import FlowlogError
from flowlog.core.policy import DEFAULT_CONNTRACK_TIMEOUT, PROTOCOLS, Policy, load_policy
from flowlog.core.records import format_addr


class _UserError(click.ClickException):
    """One line on stderr, exit status 2 (as ``flowlog capture`` reports a user's mistake)."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"flowlog: error: {self.format_message()}", err=True)


def policy_options(f):
    """The options that describe an interface's security groups, network ACL and addresses."""
    for decorator in reversed((
        click.option("--sg", "sg", multiple=True, metavar="FILE",
                     help="A security group's rules: DescribeSecurityGroupPolicies output (JSON). Repeatable: "
                          "several groups, in priority order."),
        click.option("--acl", metavar="FILE",
                     help="The subnet's network ACL: DescribeNetworkAcls output holding one ACL (JSON)."),
        click.option("--templates", multiple=True, metavar="FILE",
                     help="Templates the rules refer to: DescribeAddressTemplates, DescribeAddressTemplateGroups, "
                          "DescribeServiceTemplates or DescribeServiceTemplateGroups output (repeatable)."),
        click.option("--interface-ip", "interface_ip", multiple=True, metavar="ADDR",
                     help="An address of the interface (repeatable): traffic to it is ingress, from it egress."),
    )):
        f = decorator(f)
    return f


_NAMES = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IPV6-ICMP": 58, "GRE": 47, "SCTP": 132, "ESP": 50,
          "AH": 51}
_PORTED = (6, 17, 132)


def _protocol(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit() and int(t) <= 255:
        return int(t)
    if t in _NAMES:
        return _NAMES[t]
    raise _UserError(f"PROTO {text!r}: a protocol number (0-255) or one of tcp, udp, icmp, icmpv6, gre, sctp")


def _number(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise _UserError(f"{what} {text!r}: a number from 0 to 65535")
    return int(text)


def _addr(text: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise _UserError(f"{what} {text!r}: not an IP address") from None
    n = int(ip)
    return format_addr(ip.version, n >> 64, n & (2**64 - 1))


def _flow_text(src, dst, proto, sport, dport) -> str:
    name = {v: k for k, v in PROTOCOLS.items() if v is not None}.get(proto, str(proto))
    if proto in (1, 58):
        return f"{src} > {dst} {name} type {dport >> 8} code {dport & 255} id {sport}"
    if proto in _PORTED:
        return f"{src}:{sport} > {dst}:{dport} {name}"
    return f"{src} > {dst} {name}"


@click.command()
@policy_options
@click.argument("src")
@click.argument("dst")
@click.argument("proto")
@click.argument("sport", required=False)
@click.argument("dport", required=False)
def explain(sg, acl, templates, interface_ip, src, dst, proto, sport, dport):
    """Show how the security groups and network ACL judge one flow and its reply.

    \b
    flowlog explain --sg sg.json --acl acl.json --interface-ip 172.31.16.139 \\
        203.0.113.12 172.31.16.139 icmp

    SRC and DST are addresses; PROTO a name (tcp, udp, icmp, icmpv6, gre, sctp) or a
    number. SPORT and DPORT are given for TCP, UDP and SCTP; for ICMP they are the
    identifier and type*256+code as records write them (default: an echo request).
    """
    p = _protocol(proto)
    src, dst = _addr(src, "SRC"), _addr(dst, "DST")
    if (sport is None) != (dport is None):
        raise _UserError("give both SPORT and DPORT, or neither")
    if sport is None:
        if p in _PORTED:
            raise _UserError(f"PROTO {proto}: give SPORT and DPORT")
        sp, dp = 0, ({1: 8, 58: 128}.get(p, 0) << 8)
    else:
        sp, dp = _number(sport, "SPORT"), _number(dport, "DPORT")
        if p not in _PORTED and p not in (1, 58) and (sp or dp):
            raise _UserError(f"PROTO {proto} has no ports: records write 0 0")
    try:
        policy = load_policy(sg, acl, templates, interface_ip, DEFAULT_CONNTRACK_TIMEOUT)
        if policy is None:
            raise _UserError("nothing to evaluate: give --sg FILE and/or --acl FILE")
        request = (src, dst, p, sp, dp)
        reply = Policy.reply_of(*request)
        first = policy.judge(*request, t_first=0.0)
        judged = [("request", request, first)]
        if reply is not None and first.direction is not None:      # the reply comes a microsecond later
            judged.append(("reply", reply, policy.judge(*reply, t_first=0.000001)))
    except FlowlogError as e:
        raise _UserError(str(e)) from None
    rows, verdicts = [], []
    for name, flow, j in judged:
        text = _flow_text(*flow)
        for step in j.steps:
            rows.append((name, text, j.direction or "-", step.stage, step.verdict, step.rule))
            text = ""
        if j.action is None:
            verdicts.append(f"{name}: not written (the reply to a rejected request never existed)")
        elif j.direction is None:
            verdicts.append(f"{name}: ACCEPT (not judged: neither address is given with --interface-ip)")
        else:
            verdicts.append(f"{name}: {j.action}" + (f" ({j.reason})" if j.reason else ""))
    if reply is None:
        verdicts.append("reply: none (this ICMP message has no reply)")
    from tabulate import tabulate

    click.echo(tabulate(rows, headers=["flow", "packet", "direction", "step", "result", "rule"],
                        tablefmt="simple", disable_numparse=True))
    click.echo("")
    for v in verdicts:
        click.echo(v)
