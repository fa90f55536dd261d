#!/usr/bin/env python3
"""Deterministic synthetic capture for flowlog's benchmark, with its exact truth.

    python bench/gen.py --packets 1000000 --flows 10000 --seed 2            # -> /tmp/flowlog-bench/...
    python bench/gen.py --packets 2000 --flows 50 --seed 1 -o /tmp/t.pcap
    python bench/gen.py --check                                               # self-check, ~2 s

The capture is classic pcap (little-endian, microseconds, link type Ethernet, full frames):
IPv4 and IPv6; TCP, UDP, ICMP/ICMPv6 echo request and reply (with identifiers) and port
unreachable (quoting the offending IP and UDP headers, whose ports must not leak into the
key); about 9 % of the flows 802.1Q tagged; Zipf-like flow sizes; a mean frame of about 650
bytes; timestamps spread over 600 s, in non-decreasing order. Payloads are zeros.

Beside ``NAME.pcap`` it writes ``NAME.truth.json``: total packets, IP bytes (IPv4 total
length, IPv6 payload length + 40), link-layer (frame) bytes, the number of unidirectional
5-tuple flows (ICMP keyed as in SPEC.md: srcport = identifier for echo, dstport =
type * 256 + code) and, per 60 s epoch-aligned window, flows, packets and bytes.

The same arguments give byte-identical files (with the same numpy: the random streams are
numpy's PCG64). Everything is numpy-vectorised and written in chunks, so 10M packets
(~6.7 GB) take well under a minute and little memory beyond the per-packet arrays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time

import numpy as np

GENERATOR_VERSION = 2
#: First packet's time is at or after this (deliberately not on a 60 s boundary).
EPOCH0 = 1_700_000_017
SPAN_US = 600_000_000
WINDOW = 60
#: Packets per written chunk. A constant, not an option: it must not change the output.
CHUNK = 1 << 18
DEFAULT_DIR = "/tmp/flowlog-bench"

# Flow kinds: (name, IP version, IP protocol, ICMP type, ICMP code)
KINDS = [
    ("tcp4", 4, 6, None, None),
    ("udp4", 4, 17, None, None),
    ("echo4", 4, 1, 8, 0),
    ("echoreply4", 4, 1, 0, 0),
    ("unreach4", 4, 1, 3, 3),
    ("tcp6", 6, 6, None, None),
    ("udp6", 6, 17, None, None),
    ("echo6", 6, 58, 128, 0),
    ("echoreply6", 6, 58, 129, 0),
    ("unreach6", 6, 58, 1, 4),
]
KIND_P = np.array([0.56, 0.19, 0.02, 0.02, 0.01, 0.12, 0.05, 0.012, 0.012, 0.006])
K_TCP4, K_UDP4, K_ECHO4, K_REPLY4, K_UNR4, K_TCP6, K_UDP6, K_ECHO6, K_REPLY6, K_UNR6 = range(10)
KIND_VER = np.array([k[1] for k in KINDS], dtype=np.uint8)
KIND_PROTO = np.array([k[2] for k in KINDS], dtype=np.uint8)
KIND_ICMP = np.array([k[3] if k[3] is not None else -1 for k in KINDS])
KIND_CODE = np.array([k[4] if k[4] is not None else 0 for k in KINDS])
IS_TCP = np.isin(np.arange(10), [K_TCP4, K_TCP6])
IS_UDP = np.isin(np.arange(10), [K_UDP4, K_UDP6])
IS_ECHO = np.isin(np.arange(10), [K_ECHO4, K_REPLY4, K_ECHO6, K_REPLY6])
IS_UNR = np.isin(np.arange(10), [K_UNR4, K_UNR6])
#: Transport header bytes written per kind (for port unreachable: ICMP header + quoted IP + UDP).
KIND_L4 = np.array([20, 8, 8, 8, 8 + 28, 20, 8, 8, 8, 8 + 48])
#: IP header bytes per kind.
KIND_L3 = np.where(KIND_VER == 4, 20, 40)
#: Fixed IP lengths of the ICMP kinds (echo: 56 data bytes; unreachable: 32 quoted data bytes).
KIND_FIXED_IPLEN = np.array([0, 0, 84, 84, 88, 0, 0, 104, 104, 128])

TCP_SERVER_PORTS = np.array([443, 80, 22, 8080, 3306, 5432, 25, 993])
TCP_SERVER_P = np.array([0.55, 0.2, 0.05, 0.06, 0.04, 0.04, 0.03, 0.03])
UDP_SERVER_PORTS = np.array([53, 123, 443, 5353, 514, 161, 4789])
UDP_SERVER_P = np.array([0.45, 0.1, 0.25, 0.05, 0.05, 0.05, 0.05])
#: Share of TCP packets that are full-size (1500 byte IP packets).
TCP_BIG_P = 0.40
ZIPF_S = 1.1
VLAN_P = 0.09


def default_path(packets: int, flows: int, seed: int, directory: str = DEFAULT_DIR) -> str:
    return os.path.join(directory, f"gen-{packets}p-{flows}f-s{seed}.pcap")


def truth_path(pcap_path: str) -> str:
    base = pcap_path[:-5] if pcap_path.endswith(".pcap") else pcap_path
    return base + ".truth.json"


# --------------------------------------------------------------------------------------------
# The traffic model: per-flow attributes, then per-packet arrays in time order.
# --------------------------------------------------------------------------------------------

def _flows(rng: np.random.Generator, packets: int, flows: int) -> dict:
    F = flows
    kind = rng.choice(10, size=F, p=KIND_P).astype(np.uint8)
    ver = KIND_VER[kind]
    # Zipf-like sizes: every flow at least one packet, the rest spread by rank weight.
    w = 1.0 / np.arange(1, F + 1, dtype=np.float64) ** ZIPF_S
    w = w[rng.permutation(F)]
    counts = 1 + rng.multinomial(packets - F, w / w.sum())
    # Addresses: clients 10/8 and 2001:db8:1::/48, servers from a pool in 198.18/15 and
    # 2001:db8:ff::/48. Client-to-server or server-to-client, half and half.
    to_server = rng.random(F) < 0.5
    n_servers = max(16, F // 50)
    client4 = rng.integers(0x0A000001, 0x0AFFFFFF, size=F, dtype=np.uint32)
    server4_pool = rng.integers(0xC6120001, 0xC613FFFF, size=n_servers, dtype=np.uint32)
    server4 = server4_pool[rng.integers(0, n_servers, size=F)]
    client6 = np.zeros((F, 16), np.uint8)
    client6[:, :6] = [0x20, 0x01, 0x0D, 0xB8, 0x00, 0x01]
    client6[:, 8:] = rng.integers(0, 256, size=(F, 8), dtype=np.uint8)
    server6_pool = np.zeros((n_servers, 16), np.uint8)
    server6_pool[:, :6] = [0x20, 0x01, 0x0D, 0xB8, 0x00, 0xFF]
    server6_pool[:, 14:] = rng.integers(0, 256, size=(n_servers, 2), dtype=np.uint8)
    server6 = server6_pool[rng.integers(0, n_servers, size=F)]
    src4 = np.where(to_server, client4, server4)
    dst4 = np.where(to_server, server4, client4)
    src6 = np.where(to_server[:, None], client6, server6)
    dst6 = np.where(to_server[:, None], server6, client6)
    # A fifth of the echo flows share their addresses with another echo flow of the same kind
    # (two pings between the same hosts, different identifiers): separate flows by SPEC.md's key.
    for k in (K_ECHO4, K_REPLY4, K_ECHO6, K_REPLY6):
        ix = np.nonzero(kind == k)[0]
        if ix.size < 2:
            continue
        share = ix[1:][rng.random(ix.size - 1) < 0.2]
        donor = ix[(rng.random(share.size) * np.searchsorted(ix, share)).astype(np.int64)]
        src4[share], dst4[share] = src4[donor], dst4[donor]
        src6[share], dst6[share] = src6[donor], dst6[donor]
    # Ports.
    eph = rng.integers(32768, 61000, size=F)
    tcp_srv = rng.choice(TCP_SERVER_PORTS, size=F, p=TCP_SERVER_P)
    udp_srv = rng.choice(UDP_SERVER_PORTS, size=F, p=UDP_SERVER_P)
    udp_high = rng.random(F) < 0.3  # peer-to-peer / RTP-like: both ports high
    udp_srv = np.where(udp_high, rng.integers(10000, 60000, size=F), udp_srv)
    srv = np.where(IS_TCP[kind], tcp_srv, udp_srv)
    l4 = IS_TCP[kind] | IS_UDP[kind]
    sport = np.where(l4, np.where(to_server, eph, srv), 0)
    dport = np.where(l4, np.where(to_server, srv, eph), 0)
    icmp_id = rng.integers(1, 65536, size=F)
    # What the quoted (offending) UDP datagram of a port unreachable said: never in the key.
    quoted_sport = rng.integers(1024, 65536, size=F)
    quoted_dport = rng.integers(1024, 65536, size=F)
    # The flow key as SPEC.md has it: ICMP echo srcport = identifier, dstport = type*256+code.
    key_sport = np.where(l4, sport, np.where(IS_ECHO[kind], icmp_id, 0))
    key_dport = np.where(l4, dport, KIND_ICMP[kind] * 256 + KIND_CODE[kind])
    vlan = rng.random(F) < VLAN_P
    vid = rng.integers(1, 4095, size=F)
    isn = rng.integers(0, 1 << 32, size=F, dtype=np.uint64)
    ack = rng.integers(0, 1 << 32, size=F, dtype=np.uint64)
    # Times: a start in the 600 s, a duration skewed short.
    start = rng.integers(0, SPAN_US, size=F)
    dur = ((SPAN_US - start) * rng.random(F) ** 2).astype(np.int64)
    mac = rng.integers(0, 256, size=(F, 12), dtype=np.uint8)
    mac[:, 0] = 0x02  # locally administered, unicast
    mac[:, 6] = 0x02
    return dict(F=F, kind=kind, ver=ver, counts=counts, src4=src4, dst4=dst4, src6=src6,
                dst6=dst6, sport=sport, dport=dport, icmp_id=icmp_id, quoted_sport=quoted_sport,
                quoted_dport=quoted_dport, key_sport=key_sport, key_dport=key_dport, vlan=vlan,
                vid=vid, isn=isn, ack=ack, start=start, dur=dur, mac=mac)


def _packets(rng: np.random.Generator, fl: dict) -> dict:
    F, counts = fl["F"], fl["counts"]
    fid = np.repeat(np.arange(F, dtype=np.int32), counts)
    N = fid.size
    t = fl["start"][fid] + (rng.random(N) * fl["dur"][fid]).astype(np.int64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    fid = fid[order]
    del order
    kind = fl["kind"][fid]
    # IP lengths.
    iplen = KIND_FIXED_IPLEN[kind].astype(np.int64)
    base = KIND_L3[kind] + KIND_L4[kind]
    u = rng.random(N)
    small_pay = np.where(rng.random(N) < 0.35, 0, rng.integers(1, 300, size=N))
    tcp = IS_TCP[kind]
    iplen = np.where(tcp, np.where(u < TCP_BIG_P, 1500, base + small_pay), iplen)
    udp = IS_UDP[kind]
    iplen = np.where(udp, base + rng.integers(20, 1250, size=N), iplen)
    # Per-flow packet number and TCP sequence number (flows in time order).
    by_flow = np.argsort(fid, kind="stable")
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pay = np.where(tcp, iplen - base, 0)
    cum = np.cumsum(pay[by_flow])
    cum_excl = cum - pay[by_flow]
    fid_bf = fid[by_flow]
    rel = cum_excl - cum_excl[first[fid_bf]]
    seqno = np.empty(N, np.int64)
    seqno[by_flow] = np.arange(N) - first[fid_bf]
    tcpseq = np.empty(N, np.uint64)
    tcpseq[by_flow] = (fl["isn"][fid_bf] + rel.astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    del by_flow, cum, cum_excl, fid_bf, rel
    eth = np.where(fl["vlan"][fid], 18, 14)
    return dict(N=N, fid=fid, t=t, kind=kind, iplen=iplen, frame=eth + iplen, seqno=seqno,
                tcpseq=tcpseq)


def _truth(fl: dict, pk: dict, packets: int, flows: int, seed: int) -> dict:
    F = fl["F"]
    # Unidirectional 5-tuple keys, as bytes: version, src, dst (16 bytes each), ports, protocol.
    key = np.zeros((F, 38), np.uint8)
    key[:, 0] = fl["ver"]
    v4 = fl["ver"] == 4
    key[v4, 1:5] = fl["src4"][v4].astype(">u4").view(np.uint8).reshape(-1, 4)
    key[v4, 17:21] = fl["dst4"][v4].astype(">u4").view(np.uint8).reshape(-1, 4)
    key[~v4, 1:17] = fl["src6"][~v4]
    key[~v4, 17:33] = fl["dst6"][~v4]
    key[:, 33:35] = fl["key_sport"].astype(">u2").view(np.uint8).reshape(-1, 2)
    key[:, 35:37] = fl["key_dport"].astype(">u2").view(np.uint8).reshape(-1, 2)
    key[:, 37] = KIND_PROTO[fl["kind"]]
    _, keyid = np.unique(key.view(np.dtype((np.void, 38))).ravel(), return_inverse=True)
    n_keys = int(keyid.max()) + 1
    # What softflowd and pmacct see: ICMP keyed on type/code only (identifier dropped).
    key_noid = key.copy()
    key_noid[np.isin(KIND_PROTO[fl["kind"]], [1, 58]), 33:35] = 0
    n_keys_noid = np.unique(key_noid.view(np.dtype((np.void, 38))).ravel()).size

    sec = EPOCH0 + pk["t"] // 1_000_000
    win = sec // WINDOW
    w0 = int(win[0])
    wi = (win - w0).astype(np.int64)
    nw = int(wi[-1]) + 1
    pair = np.unique(keyid[pk["fid"]].astype(np.int64) * nw + wi)
    flows_w = np.bincount(pair % nw, minlength=nw)
    pk_w = np.bincount(wi, minlength=nw)
    by_w = np.bincount(wi, weights=pk["iplen"], minlength=nw)
    proto = KIND_PROTO[pk["kind"]]
    by_proto = {}
    for p in (1, 6, 17, 58):
        m = proto == p
        by_proto[str(p)] = {"packets": int(m.sum()), "ip_bytes": int(pk["iplen"][m].sum()),
                            "flows": int(np.unique(keyid[(KIND_PROTO[fl["kind"]] == p)]).size)}
    return {
        "generator": "flowlog bench/gen.py",
        "generator_version": GENERATOR_VERSION,
        "numpy": np.__version__,
        "args": {"packets": packets, "flows": flows, "seed": seed},
        "packets": int(pk["N"]),
        "ip_bytes": int(pk["iplen"].sum()),
        "frame_bytes": int(pk["frame"].sum()),
        "flows": n_keys,
        "flows_icmp_without_identifier": int(n_keys_noid),
        "records": int(pair.size),
        "vlan_packets": int(fl["vlan"][pk["fid"]].sum()),
        "first_ts": int(sec[0]),
        "last_ts": int(sec[-1]),
        "by_protocol": by_proto,
        "window": WINDOW,
        "windows": [{"start": (w0 + i) * WINDOW, "flows": int(flows_w[i]),
                     "packets": int(pk_w[i]), "ip_bytes": int(by_w[i])} for i in range(nw)],
    }


# --------------------------------------------------------------------------------------------
# Writing: headers built as a (packets x 130) byte matrix per chunk, scattered into a zeroed
# buffer at each record's offset.
# --------------------------------------------------------------------------------------------

HDR_W = 16 + 18 + 96  # pcap record header, Ethernet with tag, IP + transport (+ quoted)


def _be16(m, rows, col, val):
    m[rows, col] = (val >> 8) & 0xFF
    m[rows, col + 1] = val & 0xFF


def _be32(val):
    return np.asarray(val, dtype=np.uint64).astype(">u4").view(np.uint8).reshape(-1, 4)


def _ipv4_checksum(h):
    """Header checksums of the (n, 20) IPv4 headers in h (checksum field zero)."""
    w = h.astype(np.uint32)
    s = (w[:, 0::2] << 8 | w[:, 1::2]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _ip_block(fl, pk, idx, fidc, ver):
    """IP + transport headers (n, 96) of the packets idx (all of IP version ver)."""
    n = idx.size
    P = np.zeros((n, 96), np.uint8)
    if n == 0:
        return P
    f = fidc
    kind = pk["kind"][idx]
    iplen = pk["iplen"][idx]
    proto = KIND_PROTO[kind]
    if ver == 4:
        P[:, 0] = 0x45
        _be16(P, slice(None), 2, iplen)
        _be16(P, slice(None), 4, idx & 0xFFFF)
        P[:, 6] = np.where(proto == 6, 0x40, 0)  # DF on TCP
        P[:, 8] = 64
        P[:, 9] = proto
        P[:, 12:16] = _be32(fl["src4"][f])
        P[:, 16:20] = _be32(fl["dst4"][f])
        _be16(P, slice(None), 10, _ipv4_checksum(P[:, :20]))
        o = 20
    else:
        P[:, 0] = 0x60
        _be16(P, slice(None), 4, iplen - 40)
        P[:, 6] = proto
        P[:, 7] = 64
        P[:, 8:24] = fl["src6"][f]
        P[:, 24:40] = fl["dst6"][f]
        o = 40
    sport, dport = fl["sport"][f], fl["dport"][f]
    t = IS_TCP[kind]
    if t.any():
        r = np.nonzero(t)[0]
        _be16(P, r, o, sport[r])
        _be16(P, r, o + 2, dport[r])
        P[r, o + 4:o + 8] = _be32(pk["tcpseq"][idx[r]])
        P[r, o + 8:o + 12] = _be32(fl["ack"][f[r]])
        P[r, o + 12] = 0x50
        P[r, o + 13] = np.where(iplen[r] > (o + 20), 0x18, 0x10)  # PSH|ACK, or a pure ACK
        P[r, o + 14] = 0xFF
        P[r, o + 15] = 0xFF
    u = IS_UDP[kind]
    if u.any():
        r = np.nonzero(u)[0]
        _be16(P, r, o, sport[r])
        _be16(P, r, o + 2, dport[r])
        _be16(P, r, o + 4, iplen[r] - o)
    e = IS_ECHO[kind]
    if e.any():
        r = np.nonzero(e)[0]
        P[r, o] = KIND_ICMP[kind[r]]
        _be16(P, r, o + 4, fl["icmp_id"][f[r]])
        _be16(P, r, o + 6, pk["seqno"][idx[r]] & 0xFFFF)
    x = IS_UNR[kind]
    if x.any():
        r = np.nonzero(x)[0]
        P[r, o] = KIND_ICMP[kind[r]]
        P[r, o + 1] = KIND_CODE[kind[r]]
        q = o + 8  # the quoted datagram: it went the other way (dst -> src), UDP
        if ver == 4:
            P[r, q] = 0x45
            _be16(P, r, q + 2, 20 + 8 + 32)
            P[r, q + 8] = 64
            P[r, q + 9] = 17
            P[r, q + 12:q + 16] = P[r, 16:20]
            P[r, q + 16:q + 20] = P[r, 12:16]
            q += 20
        else:
            P[r, q] = 0x60
            _be16(P, r, q + 4, 8 + 32)
            P[r, q + 6] = 17
            P[r, q + 7] = 64
            P[r, q + 8:q + 24] = P[r, 24:40]
            P[r, q + 24:q + 40] = P[r, 8:24]
            q += 40
        _be16(P, r, q, fl["quoted_sport"][f[r]])
        _be16(P, r, q + 2, fl["quoted_dport"][f[r]])
        _be16(P, r, q + 4, 8 + 32)
    return P


def _chunk_bytes(fl: dict, pk: dict, a: int, b: int) -> np.ndarray:
    idx = np.arange(a, b)
    n = idx.size
    fid = pk["fid"][a:b]
    frame = pk["frame"][a:b]
    t = pk["t"][a:b]
    vlan = fl["vlan"][fid]
    ver = fl["ver"][fid]
    H = np.zeros((n, HDR_W), np.uint8)
    rec = np.stack([EPOCH0 + t // 1_000_000, t % 1_000_000, frame, frame], axis=1)
    H[:, :16] = rec.astype("<u4").view(np.uint8)
    # Ethernet: MACs, then (tagged) 0x8100 + TCI, then the EtherType.
    H[:, 16:28] = fl["mac"][fid]
    et = np.where(ver == 4, 0x0800, 0x86DD)
    nv = np.nonzero(~vlan)[0]
    tv = np.nonzero(vlan)[0]
    _be16(H, nv, 28, et[nv])
    H[tv, 28] = 0x81
    H[tv, 29] = 0x00
    _be16(H, tv, 30, fl["vid"][fid[tv]])
    _be16(H, tv, 32, et[tv])
    l2 = np.where(vlan, 34, 30)
    hdr_len = l2 + KIND_L3[pk["kind"][a:b]] + KIND_L4[pk["kind"][a:b]]
    for v in (4, 6):
        r = np.nonzero(ver == v)[0]
        P = _ip_block(fl, pk, idx[r], fid[r], v)
        rn = r[~vlan[r]]
        rt = r[vlan[r]]
        H[rn, 30:126] = P[~vlan[r]]
        H[rt, 34:130] = P[vlan[r]]
    size = 16 + frame
    off = np.concatenate(([0], np.cumsum(size)[:-1]))
    buf = np.zeros(int(size.sum()), np.uint8)
    for h in np.unique(hdr_len):
        r = np.nonzero(hdr_len == h)[0]
        buf[off[r, None] + np.arange(h)] = H[r, :h]
    return buf


def generate(packets: int, flows: int, seed: int, out: str, quiet: bool = True) -> dict:
    """Write the capture ``out`` and its truth beside it; return the truth."""
    if not 1 <= flows <= packets:
        raise ValueError("need 1 <= flows <= packets")
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0x666C6F77])  # "flow"
    fl = _flows(rng, packets, flows)
    pk = _packets(rng, fl)
    truth = _truth(fl, pk, packets, flows, seed)
    size = 24 + 16 * pk["N"] + truth["frame_bytes"]
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    free = shutil.disk_usage(d).free
    if free < size + (256 << 20):
        raise OSError(f"{d}: {free / 2**30:.1f} GiB free, the capture needs {size / 2**30:.1f} GiB")
    part = out + ".part"
    with open(part, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for a in range(0, pk["N"], CHUNK):
            fh.write(_chunk_bytes(fl, pk, a, min(a + CHUNK, pk["N"])).data)
            if not quiet:
                print(f"\r{min(a + CHUNK, pk['N']):>12,} / {pk['N']:,} packets", end="",
                      file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    truth["pcap"] = os.path.basename(out)
    truth["pcap_bytes"] = size
    tp = truth_path(out)
    with open(tp + ".part", "w") as fh:
        json.dump(truth, fh, indent=1)
        fh.write("\n")
    os.replace(part, out)
    os.replace(tp + ".part", tp)
    if not quiet:
        print(f"{out}: {size / 1e6:,.0f} MB, {truth['packets']:,} packets, {truth['flows']:,} flows, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return truth


# --------------------------------------------------------------------------------------------
# Self-check: determinism, and the truth re-derived by an independent (struct) reader.
# --------------------------------------------------------------------------------------------

def read_totals(path: str) -> dict:
    """Totals of a capture written by this generator, read back with struct (slow; small files)."""
    import ipaddress

    keys, pairs = set(), set()
    packets = ip_bytes = frame_bytes = 0
    last = None
    with open(path, "rb") as fh:
        data = fh.read()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4 and linktype == 1
    p = 24
    while p < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, p)
        p += 16
        fr = data[p:p + incl]
        p += incl
        assert incl == orig
        ts = (sec, usec)
        assert last is None or ts >= last, "timestamps go backwards"
        last = ts
        et = int.from_bytes(fr[12:14], "big")
        o = 14
        if et == 0x8100:
            et = int.from_bytes(fr[16:18], "big")
            o = 18
        if et == 0x0800:
            ihl = (fr[o] & 15) * 4
            ln = int.from_bytes(fr[o + 2:o + 4], "big")
            proto = fr[o + 9]
            src = ipaddress.ip_address(fr[o + 12:o + 16])
            dst = ipaddress.ip_address(fr[o + 16:o + 20])
            l4 = o + ihl
        elif et == 0x86DD:
            ln = int.from_bytes(fr[o + 4:o + 6], "big") + 40
            proto = fr[o + 6]
            src = ipaddress.ip_address(fr[o + 8:o + 24])
            dst = ipaddress.ip_address(fr[o + 24:o + 40])
            l4 = o + 40
        else:
            raise AssertionError(f"EtherType {et:#x}")
        assert o + ln == incl, "frame length and IP length disagree"
        if proto in (6, 17):
            sp, dp = struct.unpack_from(">HH", fr, l4)
        elif proto in (1, 58):
            ty, code = fr[l4], fr[l4 + 1]
            echo = ty in ((0, 8) if proto == 1 else (128, 129))
            sp = int.from_bytes(fr[l4 + 4:l4 + 6], "big") if echo else 0
            dp = ty * 256 + code
        else:
            sp = dp = 0
        k = (str(src), str(dst), sp, dp, proto)
        keys.add(k)
        pairs.add((k, sec // WINDOW))
        packets += 1
        ip_bytes += ln
        frame_bytes += incl
    per_w = {}
    for _, w in pairs:
        per_w[w * WINDOW] = per_w.get(w * WINDOW, 0) + 1
    return {"packets": packets, "ip_bytes": ip_bytes, "frame_bytes": frame_bytes,
            "flows": len(keys), "records": len(pairs), "window_flows": per_w}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def check(packets: int = 20000, flows: int = 400, seed: int = 7) -> list[str]:
    """Generate twice, compare hashes, re-read and compare with the truth. Returns problems."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="flowlog-gen-check-") as d:
        a, b = os.path.join(d, "a.pcap"), os.path.join(d, "b.pcap")
        ta = generate(packets, flows, seed, a)
        generate(packets, flows, seed, b)
        for x, y in ((a, b), (truth_path(a), truth_path(b))):
            hx, hy = _sha256(x), _sha256(y)
            if x.endswith(".json"):  # the truth names its own capture file: compare without it
                jx, jy = (json.load(open(p)) for p in (x, y))
                jx.pop("pcap"), jy.pop("pcap")
                hx, hy = (hashlib.sha256(json.dumps(j, sort_keys=True).encode()).hexdigest()
                          for j in (jx, jy))
            if hx != hy:
                problems.append(f"same arguments, different {os.path.basename(x)}: {hx} != {hy}")
        c = os.path.join(d, "c.pcap")
        generate(packets, flows, seed + 1, c)
        if _sha256(a) == _sha256(c):
            problems.append("a different seed gave the same capture")
        got = read_totals(a)
        for k in ("packets", "ip_bytes", "frame_bytes", "flows", "records"):
            if got[k] != ta[k]:
                problems.append(f"{k}: truth {ta[k]}, read back {got[k]}")
        if os.path.getsize(a) != ta["pcap_bytes"]:
            problems.append(f"file size {os.path.getsize(a)} != {ta['pcap_bytes']}")
        want_w = {w["start"]: w["flows"] for w in ta["windows"]}
        if got["window_flows"] != want_w:
            problems.append(f"per-window flows differ: truth {want_w}, read back {got['window_flows']}")
        mean = ta["frame_bytes"] / ta["packets"]
        if not 500 < mean < 800:
            problems.append(f"mean frame {mean:.0f} bytes")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--dir", default=DEFAULT_DIR, help="where the capture goes without -o (default %(default)s)")
    ap.add_argument("-o", "--output", help="capture path (default DIR/gen-<P>p-<F>f-s<SEED>.pcap); "
                    "the truth goes beside it as .truth.json")
    ap.add_argument("--check", action="store_true",
                    help="self-check: generate a small capture twice (byte-identical?), read it back "
                         "and compare with its truth")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.check:
        problems = check()
        for p in problems:
            print(f"gen.py --check: {p}", file=sys.stderr)
        print("gen.py --check: " + ("FAILED" if problems else "ok (deterministic, truth re-derived)"))
        return 1 if problems else 0
    out = a.output or default_path(a.packets, a.flows, a.seed, a.dir)
    try:
        generate(a.packets, a.flows, a.seed, out, quiet=a.quiet)
    except (ValueError, OSError) as e:
        print(f"gen.py: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
