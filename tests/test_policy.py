"""ACCEPT and REJECT from security groups and network ACLs (SPEC.md, "Policy").

The policies in tests/data/policy are in the shapes Tencent Cloud's API and tccli print:
DescribeSecurityGroupPolicies (sg*.json), DescribeNetworkAcls (acl*.json) and the template
APIs (address-*.json, service-*.json). The interface is the web server 172.31.16.139 (and
2001:db8:1::10); see each file for its rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flowlog.cli.main import main
from flowlog.core import jit, synth
from flowlog.core.errors import ConfigError
from flowlog.core.policy import load_policy

HERE = Path(__file__).resolve().parent
POLICY = HERE / "data" / "policy"
CAPTURES = HERE / "data" / "captures"
SG, SG_NO_ICMP, SG_TEMPLATES = (str(POLICY / n) for n in ("sg.json", "sg-no-icmp.json", "sg-templates.json"))
ACL, ACL_ICMP_OUT = str(POLICY / "acl.json"), str(POLICY / "acl-icmp-out.json")
TEMPLATES = [str(POLICY / n) for n in ("address-templates.json", "address-template-groups.json",
                                       "service-templates.json", "service-template-groups.json", "sg-members.json")]
ME, ME6 = "172.31.16.139", "2001:db8:1::10"
PEER = "203.0.113.12"
FIELDS = "srcaddr,dstaddr,srcport,dstport,protocol,packets,action,flow-direction,reject-reason"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write(path, items) -> str:
    """``(time, src, dst, proto, sport, dport[, icmp_type, ident])`` items to a pcap."""
    frames = []
    for it in items:
        t, src, dst, proto, sp, dp = it[:6]
        kw = {}
        if proto in (1, 58):
            kw = dict(icmp_type=it[6], ident=it[7])
        frames.append((t, synth.packet(src, dst, proto, sp, dp, **kw)))
    synth.write_pcap(path, frames)
    return str(path)


def rows(result) -> list[list[str]]:
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.stdout.splitlines()]


def capture(pcap, *args, fields=FIELDS):
    return invoke("capture", "-r", pcap, "--fields", fields, *args)


@pytest.fixture
def ping(tmp_path):
    """A ping from 203.0.113.12 to the interface, and its replies (SPEC.md's worked case)."""
    items = []
    for k in range(3):
        items.append((1_700_000_000 + k, PEER, ME, 1, 0, 0, 8, 0x1d2c))
        items.append((1_700_000_000 + k + 0.0004, ME, PEER, 1, 0, 0, 0, 0x1d2c))
    return write(tmp_path / "ping.pcap", items)


# -- the seed's ping, both ways --------------------------------------------------------------------

def test_ping_reply_rejected_by_the_stateless_acl(ping):
    """ACL and group allow inbound ICMP, neither outbound: the group lets the reply out (state), the ACL does not."""
    out = rows(capture(ping, "--sg", SG, "--acl", ACL, "--interface-ip", ME))
    assert out == [[PEER, ME, "7468", "2048", "1", "3", "ACCEPT", "ingress", "-"],
                   [ME, PEER, "7468", "0", "1", "3", "REJECT", "egress", "acl:egress:default"]]


def test_ping_accepted_both_ways_when_the_acl_allows_outbound_icmp(ping):
    out = rows(capture(ping, "--sg", SG, "--acl", ACL_ICMP_OUT, "--interface-ip", ME))
    assert [r[6:] for r in out] == [["ACCEPT", "ingress", "-"], ["ACCEPT", "egress", "-"]]


def test_ping_denied_by_the_group_gives_one_reject_and_no_reply(ping):
    result = capture(ping, "--sg", SG_NO_ICMP, "--acl", ACL, "--interface-ip", ME, "--stats")
    assert rows(result) == [[PEER, ME, "7468", "2048", "1", "3", "REJECT", "ingress", "sg:ingress:1"]]
    assert "1 reply flow(s) (3 packets, 84 bytes) not written" in result.stderr
    assert "replies not written (request rejected): flows" in result.stderr
    quiet = capture(ping, "--sg", SG_NO_ICMP, "--acl", ACL, "--interface-ip", ME, "-q")
    assert quiet.stderr == "" and len(rows(quiet)) == 1


def test_without_a_policy_nothing_changes(ping):
    plain = invoke("capture", "-r", ping)
    assert plain.exit_code == 0 and plain.stdout.count(" ACCEPT OK") == 2
    assert invoke("capture", "-r", ping, "--interface-ip", ME).stdout == plain.stdout
    assert invoke("capture", "-r", ping, "--traffic-type", "all").stdout == plain.stdout
    # --interface-ip alone fills flow-direction, and nothing else
    out = rows(capture(ping, "--interface-ip", ME))
    assert [r[6:] for r in out] == [["ACCEPT", "ingress", "-"], ["ACCEPT", "egress", "-"]]


def test_text_records_say_reject(ping):
    out = invoke("capture", "-r", ping, "--sg", SG, "--acl", ACL, "--interface-ip", ME).stdout.splitlines()
    assert out[1].endswith(" 1 3 84 1699999980 1700000040 REJECT OK")
    js = [json.loads(l) for l in invoke("capture", "-r", ping, "--sg", SG, "--acl", ACL, "--interface-ip", ME,
                                        "--format", "json", "--fields", "action,reject-reason").stdout.splitlines()]
    assert js == [{"action": "ACCEPT", "reject-reason": None},
                  {"action": "REJECT", "reject-reason": "acl:egress:default"}]


# -- the stateful group ------------------------------------------------------------------------------

def test_tcp_reply_passes_the_group_by_state(tmp_path):
    t = 1_700_000_000
    pcap = write(tmp_path / "tcp.pcap", [
        (t, PEER, ME, 6, 40000, 22), (t + 0.01, ME, PEER, 6, 22, 40000),        # ssh from the office
        (t + 1, ME, PEER, 6, 22, 40001),                                          # unsolicited: no rule lets it out
        (t + 2, "192.0.2.1", ME, 6, 40002, 22), (t + 2.01, ME, "192.0.2.1", 6, 22, 40002),   # ssh from elsewhere
    ])
    out = rows(capture(pcap, "--sg", SG, "--acl", ACL, "--interface-ip", ME))
    assert [(r[0], r[1], r[2], r[3], r[6], r[8]) for r in out] == [
        (PEER, ME, "40000", "22", "ACCEPT", "-"),
        (ME, PEER, "22", "40000", "ACCEPT", "-"),
        (ME, PEER, "22", "40001", "REJECT", "sg:egress:3"),
        ("192.0.2.1", ME, "40002", "22", "REJECT", "sg:ingress:6"),
    ]


def test_udp_reply_state_across_windows_and_its_timeout(tmp_path):
    """A DNS query out, the answer in a later window: allowed by the group's state until it expires."""
    t = 1_700_000_000
    pcap = write(tmp_path / "udp.pcap", [
        (t, ME, "8.8.8.8", 17, 5353, 53),
        (t + 70, "8.8.8.8", ME, 17, 53, 5353),                                     # the next window
        (t + 71, "8.8.4.4", ME, 17, 53, 5353),                                    # nobody asked 8.8.4.4
    ])
    out = rows(capture(pcap, "--sg", SG, "--acl", ACL, "--interface-ip", ME))
    assert [(r[0], r[6], r[8]) for r in out] == [(ME, "ACCEPT", "-"), ("8.8.8.8", "ACCEPT", "-"),
                                                 ("8.8.4.4", "REJECT", "sg:ingress:6")]
    short = rows(capture(pcap, "--sg", SG, "--acl", ACL, "--interface-ip", ME, "--conntrack-timeout", "60"))
    assert [(r[0], r[6], r[8]) for r in short][1] == ("8.8.8.8", "REJECT", "sg:ingress:6")


def test_icmp_reply_needs_the_same_identifier(tmp_path):
    t = 1_700_000_000
    pcap = write(tmp_path / "icmp.pcap", [
        (t, ME, PEER, 1, 0, 0, 8, 7), (t + 0.1, PEER, ME, 1, 0, 0, 0, 7),       # egress ping: SG drops it
        (t + 1, PEER, ME, 1, 0, 0, 0, 8),                                         # a reply to nothing
    ])
    result = capture(pcap, "--sg", SG, "--acl", ACL_ICMP_OUT, "--interface-ip", ME, "-q")
    # the request is rejected by the group's egress rules; its reply is left out; the stray reply is judged alone
    assert [(r[0], r[2], r[3], r[6], r[8]) for r in rows(result)] == [
        (ME, "7", "2048", "REJECT", "sg:egress:3"), (PEER, "8", "0", "ACCEPT", "-")]


def test_other_protocols_reply_is_the_reverse_address_pair(tmp_path):
    sg = tmp_path / "sg-gre.json"
    sg.write_text(json.dumps({"SecurityGroupPolicySet": {"Version": "1", "Ingress": [],
                                                         "Egress": [{"Protocol": "GRE", "CidrBlock": "0.0.0.0/0",
                                                                     "Action": "ACCEPT"}]}}))
    t = 1_700_000_000
    pcap = write(tmp_path / "gre.pcap", [(t, ME, PEER, 47, 0, 0), (t + 1, PEER, ME, 47, 0, 0),
                                         (t + 2, "192.0.2.9", ME, 47, 0, 0)])
    out = rows(capture(pcap, "--sg", sg, "--interface-ip", ME))
    assert [(r[0], r[6], r[8]) for r in out] == [(ME, "ACCEPT", "-"), (PEER, "ACCEPT", "-"),
                                                 ("192.0.2.9", "REJECT", "sg:ingress:default")]


# -- IPv6, ports, case ---------------------------------------------------------------------------------

def test_ipv6(tmp_path):
    t = 1_700_000_000
    pcap = write(tmp_path / "v6.pcap", [
        (t, "2001:db8::5", ME6, 6, 50000, 443), (t + 0.01, ME6, "2001:db8::5", 6, 443, 50000),
        (t + 1, "2001:db9::5", ME6, 6, 50001, 443),
        (t + 2, "2001:db9::5", ME6, 58, 0, 0, 128, 99), (t + 2.01, ME6, "2001:db9::5", 58, 0, 0, 129, 99),
    ])
    out = rows(capture(pcap, "--sg", SG, "--acl", ACL, "--interface-ip", ME, "--interface-ip", ME6))
    assert [(r[0], r[3], r[6], r[7], r[8]) for r in out] == [
        ("2001:db8::5", "443", "ACCEPT", "ingress", "-"),
        (ME6, "50000", "ACCEPT", "egress", "-"),
        ("2001:db9::5", "443", "REJECT", "ingress", "sg:ingress:default"),    # the IPv4 catch-all does not apply
        ("2001:db9::5", "32768", "ACCEPT", "ingress", "-"),
        (ME6, "33024", "ACCEPT", "egress", "-"),
    ]


def _verdict(policy, src, dst, proto, sport=0, dport=0):
    j = policy.judge(src, dst, proto, sport, dport)
    return j.action, j.reason


@pytest.mark.parametrize("dport,action", [(8000, "ACCEPT"), (8005, "ACCEPT"), (8010, "ACCEPT"), (7999, "REJECT"),
                                          (8011, "REJECT")])
def test_port_range(dport, action):
    policy = load_policy([SG], None, (), [ME])
    assert _verdict(policy, "198.51.100.9", ME, 17, 3000, dport)[0] == action


@pytest.mark.parametrize("dport,action", [(80, "ACCEPT"), (443, "ACCEPT"), (81, "REJECT"), (8080, "REJECT")])
def test_port_list(dport, action):
    policy = load_policy([SG], [ACL][0], (), [ME])
    assert _verdict(policy, "192.0.2.44", ME, 6, 3000, dport)[0] == action


def test_case_variants_and_number_ports(tmp_path):
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps({"Response": {"SecurityGroupPolicySet": {"Version": 2, "Egress": [], "Ingress": [
        {"PolicyIndex": 0, "Protocol": "Udp", "Port": 53, "CidrBlock": "10.0.0.0/8", "Action": "Accept"},
        {"PolicyIndex": 1, "Protocol": "icmpv6", "Port": "all", "Ipv6CidrBlock": "fd00::/8", "Action": "accept"},
        {"PolicyIndex": 2, "Protocol": "tcp", "Port": " 80 , 8000-8001 ", "CidrBlock": "10.0.0.0/8",
         "Action": "ACCEPT"},
        {"PolicyIndex": 3, "Protocol": "aLL", "CidrBlock": "10.1.0.0/16", "Action": "drop"},
        {"PolicyIndex": 4, "Protocol": "ALL", "Port": "", "CidrBlock": "10.0.0.0/8", "Action": "Accept",
         "Ipv6CidrBlock": None, "AddressTemplate": {"AddressId": "", "AddressGroupId": ""}},
    ]}}}))
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps({"NetworkAclId": "acl-1", "IngressEntries": [
        {"Protocol": "all", "CidrBlock": "0.0.0.0/0", "Action": "Accept"},
        {"Protocol": "ALL", "Ipv6CidrBlock": "::/0", "Action": "ACCEPT"}], "EgressEntries": []}))
    policy = load_policy([str(sg)], str(acl), (), [ME, "fd00::1"])
    assert _verdict(policy, "10.2.0.1", ME, 17, 999, 53) == ("ACCEPT", None)
    assert _verdict(policy, "fd00::9", "fd00::1", 58, 1, 128 << 8) == ("ACCEPT", None)
    assert _verdict(policy, "10.1.0.1", ME, 6, 999, 8001) == ("ACCEPT", None)
    assert _verdict(policy, "10.1.0.1", ME, 6, 999, 8002) == ("REJECT", "sg:ingress:3")
    assert _verdict(policy, "10.2.0.1", ME, 6, 999, 8002) == ("ACCEPT", None)
    assert _verdict(policy, "fd00::9", "fd00::1", 6, 1, 22) == ("REJECT", "sg:ingress:default")
    # egress: the ACL has no entries: denied, after the (empty) group already denied it
    assert _verdict(policy, ME, "10.2.0.1", 6, 999, 22) == ("REJECT", "sg:egress:default")


def test_several_groups_in_priority_order(ping):
    first = rows(capture(ping, "--sg", SG_NO_ICMP, "--sg", SG, "--interface-ip", ME, "-q"))
    assert [(r[6], r[8]) for r in first] == [("REJECT", "sg1:ingress:1")]
    second = rows(capture(ping, "--sg", SG, "--sg", SG_NO_ICMP, "--interface-ip", ME))
    assert [(r[6], r[8]) for r in second] == [("ACCEPT", "-"), ("ACCEPT", "-")]
    policy = load_policy([SG_NO_ICMP, SG], None, (), [ME])
    assert _verdict(policy, "192.0.2.1", ME, 6, 1000, 80) == ("ACCEPT", None)              # sg2's rule 2
    assert _verdict(policy, "192.0.2.1", ME, 17, 1000, 9999) == ("REJECT", "sg2:ingress:6")


def test_rules_follow_policy_index_and_priority(tmp_path):
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps({"SecurityGroupPolicySet": {"Ingress": [
        {"PolicyIndex": 1, "Protocol": "ALL", "CidrBlock": "0.0.0.0/0", "Action": "DROP"},
        {"PolicyIndex": 0, "Protocol": "TCP", "Port": "22", "CidrBlock": "0.0.0.0/0", "Action": "ACCEPT"}]}}))
    policy = load_policy([str(sg)], None, (), [ME])
    assert _verdict(policy, PEER, ME, 6, 1, 22) == ("ACCEPT", None)
    assert _verdict(policy, PEER, ME, 6, 1, 23) == ("REJECT", "sg:ingress:1")


def test_flows_not_of_the_interface_are_not_judged(tmp_path):
    t = 1_700_000_000
    pcap = write(tmp_path / "other.pcap", [(t, "10.9.9.9", "10.8.8.8", 6, 1, 2), (t + 1, ME, ME, 6, 3, 4)])
    result = capture(pcap, "--sg", SG, "--acl", ACL, "--interface-ip", ME, "--stats")
    # a flow to and from the interface's own addresses is egress
    assert [(r[6], r[7], r[8]) for r in rows(result)] == [("ACCEPT", "-", "-"), ("REJECT", "egress", "sg:egress:3")]
    stats = dict(l.rsplit(None, 1) for l in result.stderr.splitlines() if l.strip())
    assert stats["not the interface's (not judged): flows"] == "1"
    assert stats["policy: flows judged"] == "1" and stats["REJECT"] == "1"


# -- templates and referenced groups ---------------------------------------------------------------------

@pytest.mark.parametrize("src,proto,dport,expected", [
    ("192.0.2.5", 6, 8080, ("ACCEPT", None)),              # office CIDR, tcp:8080
    ("192.0.2.205", 17, 99, ("ACCEPT", None)),             # office range, "udp: 99"
    ("192.0.2.150", 6, 8080, ("REJECT", "sg:ingress:3")),  # neither the /25 nor the range
    ("192.0.2.5", 6, 8081, ("REJECT", "sg:ingress:3")),
    ("198.51.100.7", 6, 3389, ("ACCEPT", None)),           # partners (group) and admin services (group)
    ("2001:db8:beef::1", 6, 22, ("ACCEPT", None)),
    ("198.51.100.7", 1, 8 << 8, ("ACCEPT", None)),         # "icmp" in the admin service template
    ("198.51.100.8", 6, 22, ("REJECT", "sg:ingress:3")),
    ("172.31.20.5", 6, 5432, ("ACCEPT", None)),            # a member of the referenced security group
    ("172.31.20.7", 6, 5432, ("REJECT", "sg:ingress:3")),
])
def test_template_references(src, proto, dport, expected):
    me = ME6 if ":" in src else ME
    policy = load_policy([SG_TEMPLATES], None, TEMPLATES, [ME, ME6])
    assert _verdict(policy, src, me, proto, 1234 if proto != 1 else 0, dport) == expected


@pytest.mark.parametrize("leave_out,needle", [
    ("service-templates.json", "ServiceTemplate ServiceId 'ppm-bu8cir16' is not defined: give the output of "
                               "DescribeServiceTemplates with --templates FILE"),
    ("address-templates.json", "AddressTemplate AddressId 'ipm-mdunqeb6' is not defined"),
    ("address-template-groups.json", "AddressTemplate AddressGroupId 'ipmg-ivrc58q8' is not defined"),
    ("sg-members.json", "Ingress[2]: refers to security group 'sg-5t0db9gq': give its members' addresses"),
])
def test_template_references_are_never_guessed(leave_out, needle):
    args = [a for t in TEMPLATES if not t.endswith(leave_out) for a in ("--templates", t)]
    result = invoke("capture", "-r", CAPTURES / "icmp.pcap", "--sg", SG_TEMPLATES, *args, "--interface-ip", ME)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("flowlog: error: ")
    assert needle in result.stderr, result.stderr


def test_a_group_member_missing_is_an_error(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"AddressTemplateGroupSet": [
        {"AddressTemplateGroupId": "ipmg-ivrc58q8", "AddressTemplateIdSet": ["ipm-2uw6ujo6", "ipm-nothere"]}]}))
    templates = [t for t in TEMPLATES if "address-template-groups" not in t] + [str(groups)]
    with pytest.raises(ConfigError, match=r"template 'ipm-nothere' \(in group 'ipmg-ivrc58q8'\) is not defined"):
        load_policy([SG_TEMPLATES], None, templates, [ME])


# -- a corpus capture ------------------------------------------------------------------------------------

PINGS = str(CAPTURES / "timeout-with-pings.pcap")     # 192.168.1.10 -> 192.168.1.20: TCP to port 80, then pings


def test_policy_on_a_corpus_capture():
    args = ("--sg", SG, "--acl", ACL, "--interface-ip", "192.168.1.20")
    out = rows(capture(PINGS, *args))
    assert [(r[0], r[3], r[4], r[6], r[7], r[8]) for r in out] == [
        ("192.168.1.10", "80", "6", "ACCEPT", "ingress", "-"),
        ("192.168.1.20", "12345", "6", "ACCEPT", "egress", "-"),
        ("192.168.1.10", "2048", "1", "ACCEPT", "ingress", "-"),
        ("192.168.1.20", "0", "1", "REJECT", "egress", "acl:egress:default"),
    ]
    # the records are the plain run's, but for the action
    plain = invoke("capture", "-r", PINGS).stdout.splitlines()
    judged = invoke("capture", "-r", PINGS, *args).stdout.splitlines()
    assert judged == plain[:3] + [plain[3].replace(" ACCEPT OK", " REJECT OK")]
    # which flows the ACL would reject, as the README shows
    rejects = invoke("capture", "-r", PINGS, *args, "--traffic-type", "reject").stdout.splitlines()
    assert rejects == judged[3:]
    assert invoke("capture", "-r", PINGS, *args, "--traffic-type", "accept").stdout.splitlines() == judged[:3]
    assert invoke("capture", "-r", PINGS, "--sg", SG, "--acl", ACL_ICMP_OUT, "--interface-ip",
                  "192.168.1.20").stdout.splitlines() == plain


def test_traffic_type_keeps_nodata(tmp_path):
    t = 1_700_000_000
    pcap = write(tmp_path / "gap.pcap", [(t, PEER, ME, 6, 1, 22), (t + 600, PEER, ME, 6, 1, 22)])
    out = invoke("capture", "-r", pcap, "--sg", SG, "--interface-ip", ME, "--traffic-type", "reject").stdout
    assert [l.split()[-1] for l in out.splitlines()] == ["NODATA"]
    out = invoke("capture", "-r", pcap, "--traffic-type", "reject", "--stats")
    assert [l.split()[-1] for l in out.stdout.splitlines()] == ["NODATA"]
    assert "records left out by --traffic-type" in out.stderr


# -- flowlog explain ---------------------------------------------------------------------------------------

def test_explain_the_ping():
    result = invoke("explain", "--sg", SG, "--acl", ACL, "--interface-ip", ME, PEER, ME, "icmp")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["flow", "packet", "direction", "step", "result", "rule"]
    body = [l for l in lines[2:] if l.strip()]
    assert "network ACL" in body[0] and "acl:ingress:1: ACCEPT ICMP" in body[0]
    assert "security group" in body[1] and "sg:ingress:0" in body[1]
    assert "state: the reply to a flow it let through" in body[2]
    assert "REJECT" in body[3] and "no rule matched" in body[3]
    assert body[-2:] == ["request: ACCEPT", "reply: REJECT (acl:egress:default)"]


def test_explain_a_rejected_request_and_tcp():
    out = invoke("explain", "--sg", SG_NO_ICMP, "--acl", ACL, "--interface-ip", ME, PEER, ME, "1").stdout
    assert out.splitlines()[-2:] == ["request: REJECT (sg:ingress:1)",
                                     "reply: not written (the reply to a rejected request never existed)"]
    out = invoke("explain", "--sg", SG, "--interface-ip", ME, ME, "192.0.2.1", "tcp", "50000", "8443").stdout
    assert out.splitlines()[-2:] == ["request: REJECT (sg:egress:3)",
                                     "reply: not written (the reply to a rejected request never existed)"]
    out = invoke("explain", "--sg", SG, "--interface-ip", ME, "10.0.0.1", "10.0.0.2", "udp", "1", "2").stdout
    assert "not judged" in out


@pytest.mark.parametrize("args,needle", [
    (("--sg", SG, "--interface-ip", ME, PEER, ME, "tcp"), "give SPORT and DPORT"),
    (("--sg", SG, "--interface-ip", ME, PEER, ME, "tcp", "1"), "give both SPORT and DPORT"),
    (("--sg", SG, "--interface-ip", ME, PEER, ME, "bogus"), "PROTO 'bogus'"),
    (("--sg", SG, "--interface-ip", ME, PEER, ME, "tcp", "1", "70000"), "DPORT '70000'"),
    (("--sg", SG, "--interface-ip", ME, "nowhere", ME, "icmp"), "SRC 'nowhere': not an IP address"),
    (("--interface-ip", ME, PEER, ME, "icmp"), "nothing to evaluate"),
    (("--sg", SG, PEER, ME, "icmp"), "--interface-ip"),
])
def test_explain_errors_are_one_line(args, needle):
    result = invoke("explain", *args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


# -- bad policy files: one clear line, exit 2 ----------------------------------------------------------

def _sg_with(rule) -> dict:
    ok = {"PolicyIndex": 0, "Protocol": "TCP", "Port": "22", "CidrBlock": "0.0.0.0/0", "Action": "ACCEPT"}
    ingress = [ok, dict(ok, PolicyIndex=1), {"PolicyIndex": 2, **rule}]
    return {"Response": {"SecurityGroupPolicySet": {"Version": "1", "Egress": [], "Ingress": ingress}}}


_RULE = {"Protocol": "TCP", "Port": "22", "CidrBlock": "10.0.0.0/24", "Action": "ACCEPT"}


@pytest.mark.parametrize("content,expected", [
    ("{not json", "sg.json: not JSON (line 1, column 2: "),
    ("", "sg.json: not JSON (line 1, column 1: Expecting value)"),
    ("[1, 2]", "sg.json: not the output of DescribeSecurityGroupPolicies"),
    (json.dumps({"NetworkAclSet": []}), "sg.json: not the output of DescribeSecurityGroupPolicies"),
    (json.dumps({"SecurityGroupPolicySet": {"Ingress": {"a": 1}}}), "sg.json: Ingress: not a list"),
    (json.dumps(_sg_with({**_RULE, "CidrBlock": "10.0.0.300/24"})), "sg.json: Ingress[2]: bad CIDR '10.0.0.300/24'"),
    (json.dumps(_sg_with({**_RULE, "Port": "70000"})), "sg.json: Ingress[2]: bad port '70000'"),
    (json.dumps(_sg_with({**_RULE, "Port": "10-5"})), "sg.json: Ingress[2]: bad port '10-5'"),
    (json.dumps(_sg_with({**_RULE, "Port": "ssh"})), "sg.json: Ingress[2]: bad port 'ssh'"),
    (json.dumps(_sg_with({**_RULE, "Port": -1})), "sg.json: Ingress[2]: bad port -1"),
    (json.dumps(_sg_with({**_RULE, "Protocol": "SCTP"})), "sg.json: Ingress[2]: bad protocol 'SCTP'"),
    (json.dumps(_sg_with({**_RULE, "Action": "ALLOW"})), "sg.json: Ingress[2]: bad Action 'ALLOW' (ACCEPT or DROP)"),
    (json.dumps(_sg_with({**_RULE, "Protocol": "ICMP"})), "sg.json: Ingress[2]: port '22' with protocol ICMP"),
    (json.dumps(_sg_with({"Protocol": "TCP", "Action": "ACCEPT"})), "sg.json: Ingress[2]: no address"),
    (json.dumps(_sg_with({**_RULE, "Protocol": ""})), "sg.json: Ingress[2]: no Protocol and no ServiceTemplate"),
    (json.dumps(_sg_with({**_RULE, "SecurityGroupId": "sg-1"})), "sg.json: Ingress[2]: more than one of"),
    (json.dumps(_sg_with({**_RULE, "ServiceTemplate": {"ServiceId": "ppm-1"}})),
     "sg.json: Ingress[2]: both Protocol/Port and a ServiceTemplate"),
    (json.dumps({"SecurityGroupPolicySet": {"Ingress": ["x"]}}), "sg.json: Ingress[0]: not a JSON object"),
    (json.dumps({"Response": {"Error": {"Code": "AuthFailure.SignatureExpire", "Message": "expired"},
                              "RequestId": "x"}}),
     "sg.json: the file holds an API error, not a policy: AuthFailure.SignatureExpire: expired"),
])
def test_bad_security_group_file(tmp_path, content, expected):
    (tmp_path / "sg.json").write_text(content)
    _assert_one_line(_run_in(tmp_path, "--sg", "sg.json"), expected)


def _run_in(cwd, *args):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["capture", "-r", str(CAPTURES / "icmp.pcap"), *args, "--interface-ip", ME],
                                  catch_exceptions=False)
    finally:
        os.chdir(old)


def _assert_one_line(result, expected):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("flowlog: error: "), result.stderr
    assert expected in result.stderr, result.stderr


def _acl(**entry):
    return {"Response": {"NetworkAclSet": [{"NetworkAclId": "acl-1", "NetworkAclType": "TRIPLE",
                                            "IngressEntries": [{"Protocol": "ALL", "CidrBlock": "0.0.0.0/0",
                                                                "Action": "Accept"}, entry],
                                            "EgressEntries": []}]}}


@pytest.mark.parametrize("content,expected", [
    ("nope", "acl.json: not JSON"),
    (json.dumps({"SecurityGroupPolicySet": {"Ingress": []}}), "acl.json: not the output of DescribeNetworkAcls"),
    (json.dumps({"NetworkAclSet": []}), "acl.json: NetworkAclSet holds no ACL"),
    (json.dumps({"NetworkAclSet": [{"NetworkAclId": "acl-a", "IngressEntries": []},
                                   {"NetworkAclId": "acl-b", "IngressEntries": []}]}),
     "acl.json: NetworkAclSet holds 2 ACLs (acl-a, acl-b)"),
    (json.dumps(_acl(Protocol="TCP", Port="22", CidrBlock="10.0.0.1/33", Action="Drop")),
     "acl.json: NetworkAclSet[0].IngressEntries[1]: bad CIDR '10.0.0.1/33'"),
    (json.dumps(_acl(Protocol="TCP", Port="1-2-3", CidrBlock="10.0.0.0/8", Action="Drop")),
     "acl.json: NetworkAclSet[0].IngressEntries[1]: bad port '1-2-3'"),
    (json.dumps(_acl(Protocol="TCP", Port="22", Ipv6CidrBlock="2001:db8::/129", Action="Drop")),
     "bad CIDR '2001:db8::/129'"),
    (json.dumps(_acl(Protocol="TCP", Port="22", Action="Drop")), "IngressEntries[1]: no address"),
    (json.dumps({"NetworkAclId": "acl-q", "NetworkAclType": "QUINTUPLE", "IngressEntries": []}),
     "acl.json: a QUINTUPLE ACL"),
])
def test_bad_acl_file(tmp_path, content, expected):
    (tmp_path / "acl.json").write_text(content)
    _assert_one_line(_run_in(tmp_path, "--acl", "acl.json"), expected)


@pytest.mark.parametrize("content,expected", [
    ("{}", "t.json: no AddressTemplateSet, AddressTemplateGroupSet, ServiceTemplateSet or ServiceTemplateGroupSet"),
    (json.dumps({"AddressTemplateSet": [{"AddressTemplateId": "ipm-1", "AddressSet": ["10.0.0.9-10.0.0.1"]}]}),
     "t.json: AddressTemplateSet[0].AddressSet[0]: bad address range '10.0.0.9-10.0.0.1'"),
    (json.dumps({"ServiceTemplateSet": [{"ServiceTemplateId": "ppm-1", "ServiceSet": ["tcp:99999"]}]}),
     "t.json: ServiceTemplateSet[0].ServiceSet[0]: bad port"),
    (json.dumps({"ServiceTemplateSet": [{"ServiceTemplateId": "ppm-1", "ServiceSet": ["ftp:21"]}]}),
     "t.json: ServiceTemplateSet[0].ServiceSet[0]: bad protocol 'ftp'"),
])
def test_bad_templates_file(tmp_path, content, expected):
    (tmp_path / "t.json").write_text(content)
    _assert_one_line(_run_in(tmp_path, "--sg", SG, "--templates", "t.json"), expected)


@pytest.mark.parametrize("args,expected", [
    (("--sg", "missing.json"), "missing.json: cannot read: No such file or directory"),
    (("--templates", SG), "--templates goes with --sg or --acl"),
])
def test_bad_policy_options(tmp_path, args, expected):
    _assert_one_line(_run_in(tmp_path, *args), expected)


def test_policy_without_interface_address_is_an_error():
    result = CliRunner().invoke(main, ["capture", "-r", str(CAPTURES / "icmp.pcap"), "--sg", SG],
                                catch_exceptions=False)
    _assert_one_line(result, "--sg and --acl need the interface's addresses: give --interface-ip ADDR")
    result = CliRunner().invoke(main, ["capture", "-r", str(CAPTURES / "icmp.pcap"), "--sg", SG,
                                       "--interface-ip", "172.31.16.300"], catch_exceptions=False)
    _assert_one_line(result, "--interface-ip '172.31.16.300': not an IP address")


def test_bad_file_through_the_real_command(tmp_path):
    bad = tmp_path / "sg.json"
    bad.write_text(json.dumps(_sg_with({**_RULE, "CidrBlock": "10.0.0.300/24"})))
    r = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(CAPTURES / "icmp.pcap"),
                        "--sg", str(bad), "--interface-ip", ME], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"flowlog: error: {bad}: Ingress[2]: bad CIDR '10.0.0.300/24'\n"


# -- the compiled text kernel writes REJECT as the formatter does -------------------------------------------

def test_compiled_and_python_renderers_agree_on_reject_rows():
    if not jit.available():
        pytest.skip("numba is not available (or FLOWLOG_NO_JIT is set): the compiled renderer is not tested")
    from flowlog.core.decode import decode_batch
    from flowlog.core.fast.text import text_v2
    from flowlog.core.formats import Formatter
    from flowlog.core.frames import FrameBatch
    from flowlog.core.meter import Meter

    t = 1_700_000_000
    frames = []
    for k in range(40):
        peer = f"198.51.100.{k}" if k % 3 else f"2001:db8::{k:x}"
        me = ME6 if ":" in peer else ME
        frames.append((t + k, 0, synth.packet(peer, me, 6 if k % 2 else 17, 1000 + k, 22 if k % 4 else 8005)))
        frames.append((t + k, 500, synth.packet(me, peer, 6 if k % 2 else 17, 22 if k % 4 else 8005, 1000 + k)))
    frames.append((t + 50, 0, synth.ETH_IPV4 + b"\x45\x00"))                 # SKIPDATA
    frames.append((t + 4000, 0, synth.packet(PEER, ME, 1, icmp_type=8)))      # after a gap: NODATA
    batch = FrameBatch.from_frames(frames)
    meter = Meter(["eni-lq6mkcis"], lambda: np.array([0]), compiled=True, account_id="1251762227")
    out = meter.add(batch, decode_batch(batch, np.array([1]))) + meter.flush()
    policy = load_policy([SG], ACL, (), [ME, ME6])
    fmt = Formatter("text")
    judged = [policy.apply(rb) for rb in out]
    assert all(rb.compiled for rb in judged)
    assert sum(int(rb.action.sum()) for rb in judged) >= 10        # REJECT rows among ACCEPT ones
    assert sum(int((rb.action == 0).sum()) for rb in judged) >= 10
    for rb in judged:
        expected = "".join(line + "\n" for line in fmt.lines(rb.records()))
        assert text_v2(rb).decode() == expected
    text = "".join(text_v2(rb).decode() for rb in judged)
    assert " REJECT OK\n" in text and " ACCEPT OK\n" in text and " NODATA\n" in text and " SKIPDATA\n" in text
