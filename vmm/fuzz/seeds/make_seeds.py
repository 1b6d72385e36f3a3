#!/usr/bin/env python3
"""Writes the seed inputs of the husk-vmm fuzz targets (committed; rerun after
changing how a target in ../fuzz_targets reads its input). Each seed is a short
session a well-behaved guest driver could run, in the target's input format, so
the fuzzer starts from requests that get past the first checks."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# mmio_registers: kind (bits 0-1 read/write/memory/serve, bit 4 whole window,
# bit 5 aligned, bits 6-7 width 1/2/4/8), offset u16, then per kind: write u64,
# memory u32 address + u8 length + bytes, serve u8 queue.
def mmio_write(off, v):
    return u8(0x01 | 0x20 | (2 << 6)) + u16(off) + u64(v)


def mmio_read(off):
    return u8(0x00 | 0x20 | (2 << 6)) + u16(off)


def mmio_mem(addr, data):
    return u8(0x02) + u16(0) + u32(addr) + u8(len(data)) + data


def mmio_serve(q):
    return u8(0x03) + u16(0) + u8(q)


def blk_request_in_memory():
    """A read of sector 1 laid out at 0x20000: descriptors, avail ring, buffers."""
    desc, avail, used = 0x20000, 0x21000, 0x22000
    hdr, data, status = 0x30000, 0x31000, 0x32000
    out = b""
    table = (u64(hdr) + u32(16) + u16(1) + u16(1)
             + u64(data) + u32(512) + u16(3) + u16(2)
             + u64(status) + u32(1) + u16(2) + u16(0))
    out += mmio_mem(desc, table)
    out += mmio_mem(avail, u16(0) + u16(1) + u16(0))
    out += mmio_mem(hdr, u32(0) + u32(0) + u64(1))
    return out, desc, avail, used


def mmio_seeds():
    s = mmio_read(0x000) + mmio_read(0x004) + mmio_read(0x008)
    s += mmio_write(0x070, 1) + mmio_write(0x070, 3)
    s += mmio_write(0x014, 0) + mmio_read(0x010) + mmio_write(0x014, 1) + mmio_read(0x010)
    s += mmio_write(0x024, 0) + mmio_write(0x020, 0)
    s += mmio_write(0x024, 1) + mmio_write(0x020, 1)
    s += mmio_write(0x070, 0xB) + mmio_read(0x070)
    mem, desc, avail, used = blk_request_in_memory()
    s += mem
    s += mmio_write(0x030, 0) + mmio_read(0x034) + mmio_write(0x038, 16)
    s += mmio_write(0x080, desc) + mmio_write(0x084, 0)
    s += mmio_write(0x090, avail) + mmio_write(0x094, 0)
    s += mmio_write(0x0A0, used) + mmio_write(0x0A4, 0)
    s += mmio_write(0x044, 1)
    s += mmio_write(0x070, 0xF) + mmio_write(0x050, 0) + mmio_serve(0)
    s += mmio_read(0x060) + mmio_write(0x064, 1)
    s += u8(0x00 | (3 << 6)) + u16(0x100)  # config space, 8 bytes
    write("mmio_registers", "driver-init-and-read", s)
    write("mmio_registers", "reset", mmio_write(0x070, 3) + mmio_write(0x070, 0) + mmio_read(0x070))


# vsock_packets: op u8 % 8, then per op (see the target).
REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7


def vsock_header(op, src_port, port_sel=0, any_port=0, flags=0, buf_alloc=65536, fwd=0):
    sel = port_sel << 2
    return (u8(sel) + u8(src_port) + u16(any_port) + u8(op) + u8(flags)
            + u32(buf_alloc) + u32(fwd))


def vsock_tx(op, src_port, payload=b"", **kw):
    return (u8(0) + vsock_header(op, src_port, **kw) + u16(len(payload)) + payload
            + u8(0))


def vsock_direct(op, src_port, payload=b"", **kw):
    return u8(4) + vsock_header(op, src_port, **kw) + u16(len(payload)) + payload


def vsock_rx_buffers(n):
    return u8(3) + u8(n)


def vsock_host(connect=False, port=1024, data=b""):
    s = u8(5) + u8(1 if connect else 0)
    if connect:
        s += u16(port)
    return s + u8(len(data)) + data


def vsock_seeds():
    s = vsock_tx(REQUEST, 50) + vsock_tx(RW, 50, b"ping") + vsock_rx_buffers(4)
    s += vsock_host(data=b"pong") + vsock_rx_buffers(4)
    s += vsock_tx(CREDIT_REQUEST, 50) + vsock_tx(SHUTDOWN, 50, flags=3) + vsock_rx_buffers(2)
    write("vsock_packets", "guest-connects", s)
    s = vsock_host(connect=True, port=200) + vsock_rx_buffers(2)
    s += vsock_direct(RESPONSE, 200, port_sel=2) + vsock_host(data=b"hello") + vsock_rx_buffers(4)
    s += u8(6) + u8(0) + u8(7)
    write("vsock_packets", "host-connects", s)
    s = b"".join(vsock_tx(RW, i, b"x", port_sel=3, any_port=9000 + i) for i in range(40))
    s += vsock_rx_buffers(31)
    write("vsock_packets", "unknown-connections", s)


# fs_requests: sel u8 (bit 7 raw chain, bit 0 uid 1000, bit 1 header length from
# the input, bit 2 keep empty parts), opcode u8, node u8, body length u16, body,
# [header length u32], cut1 u16, cut2 u16, reply length u16.
def fuse(opcode, body=b"", node=0, cut1=0, cut2=0, reply=4096, sel=0):
    return (u8(sel) + u8(opcode) + u8(node) + u16(len(body)) + body
            + u16(cut1) + u16(cut2) + u16(reply))


def cstr(s):
    return s.encode() + b"\0"


def fs_seeds():
    LOOKUP, GETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RENAME, LINK, OPEN, READ, WRITE = (
        1, 3, 6, 8, 9, 10, 12, 13, 14, 15, 16)
    OPENDIR, READDIRPLUS, CREATE, STATFS = 27, 44, 35, 17
    s = fuse(LOOKUP, cstr("file"))
    s += fuse(GETATTR, u32(0) + u32(0) + u64(0), node=1)
    s += fuse(OPEN, u32(0) + u32(0), node=1)
    s += fuse(READ, u64(0) + u64(0) + u32(100) + u32(0) + u64(0) + u32(0) + u32(0), node=1)
    s += fuse(MKDIR, u32(0o755) + u32(0) + cstr("newdir"), cut1=8)
    s += fuse(CREATE, u32(0o101) + u32(0o100644) + u32(0) + u32(0) + cstr("new"), sel=1)
    s += fuse(WRITE, u64(0) + u64(0) + u32(5) + u32(0) + u64(0) + u32(0) + u32(0) + b"hello",
              node=3)
    s += fuse(OPENDIR, u32(0) + u32(0))
    s += fuse(READDIRPLUS, u64(0) + u64(0) + u32(4096) + u32(0) + u64(0) + u32(0) + u32(0))
    s += fuse(STATFS)
    write("fs_requests", "session", s)
    s = fuse(LOOKUP, cstr("../canary")) + fuse(LOOKUP, cstr("/etc/shadow"))
    s += fuse(UNLINK, cstr("..")) + fuse(MKNOD, u32(0o20666) + u32(0x103) + u32(0) + u32(0)
                                         + cstr("null"))
    s += fuse(SYMLINK, cstr("out") + cstr("../canary")) + fuse(LOOKUP, cstr("link"))
    s += fuse(LOOKUP, cstr("canary"), node=2)
    s += fuse(RENAME, u64(1) + cstr("file") + cstr("../moved"))
    s += fuse(LINK, u64(2) + cstr("hard"))
    write("fs_requests", "hostile-names", s)


# net_frames: op u8 % 5: 0 tx frame (u16 length, bytes, cut1 u16, cut2 u16),
# 1 raw tx chain, 2 host frame (u16 length, bytes), 3 raw rx chain,
# 4 rx buffer (u16 length).
def eth(payload, hdr=b"\0" * 12):
    return hdr + b"\xff" * 6 + b"\x02\0\0\0\0\x42" + b"\x88\xb5" + payload


def net_seeds():
    f = eth(b"hello", hdr=bytes([1, 0x81, 0xFF, 0xFF, 1, 0, 0xF0, 0xFF, 0xFE, 0xFF, 9, 9]))
    s = u8(0) + u16(len(f)) + f + u16(5) + u16(12)
    g = eth(b"from the host")
    s += u8(2) + u16(len(g)) + g + u8(4) + u16(1526) + u8(4) + u16(10)
    s += u8(2) + u16(len(g)) + g + u8(4) + u16(1526)
    write("net_frames", "both-ways", s)


# blk_requests: read_only u8, then per request sel u8 (bit 7 raw chain; (sel & 7) % 5
# type IN/OUT/FLUSH/GET_ID/any; (sel >> 3) % 4 sector mode), any type u32, sector
# (u8, u8, u8 or u64 by mode), buffer count u8 % 4, per buffer length u16 and
# writable u8.
def blk(kind_sel, sector_mode, sector_bytes, bufs):
    s = u8(kind_sel | (sector_mode << 3)) + u32(0) + sector_bytes + u8(len(bufs))
    for length, writable in bufs:
        s += u16(length) + u8(1 if writable else 0)
    return s


def blk_seeds():
    s = u8(0)
    s += blk(0, 0, u8(1), [(512, True), (512, True)])
    s += blk(1, 0, u8(3), [(512, False)])
    s += blk(2, 0, u8(0), [])
    s += blk(3, 0, u8(0), [(20, True)])
    s += blk(0, 1, u8(0), [(512, True)])
    s += blk(1, 2, u8(0), [(1024, False)])
    s += blk(0, 0, u8(63), [(1024, True)])
    write("blk_requests", "requests", s)
    write("blk_requests", "read-only", u8(1) + blk(1, 0, u8(0), [(512, False)]))


mmio_seeds()
vsock_seeds()
fs_seeds()
net_seeds()
blk_seeds()
