#!/usr/bin/env python3
"""Writes the seed inputs of the husk-agent fuzz targets (committed; rerun after
changing agent.proto field numbers or the RPC order in request_decode.rs).

request_decode: one selector byte (index into RPCS of request_decode.rs), then the
request's protobuf encoding. oci_json: OCI spec, process and resources JSON.
path_handling: a UTF-8 string, id or relative path,
naming links of the scratch tree (husk_agent_fuzz::Tree)."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..", "..")

# Selector bytes, in the order of RPCS in fuzz_targets/request_decode.rs.
RPCS = ["Check", "Version", "DestroySandbox", "CreateContainer", "StartContainer",
        "RemoveContainer", "ExecProcess", "SignalProcess", "WaitProcess", "ReadStdout",
        "ReadStderr", "WriteStdin", "CloseStdin", "TtyWinResize", "StatsContainer",
        "UpdateContainer", "PauseContainer", "ResumeContainer", "ListProcesses",
        "ConfigureNetwork"]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def msg(*fields):
    """fields: (number, value); str/bytes are length-delimited, int/bool varints."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, (bytes, bytearray)):
            out += varint(number << 3 | 2) + varint(len(value)) + value
        else:
            out += varint(number << 3 | 0) + varint(int(value))
    return bytes(out)


def main():
    with open(os.path.join(REPO, "tests/guest/hello/config.json"), "rb") as f:
        spec = f.read()
    process = b'{"user":{"uid":0,"gid":0},"args":["true"],"cwd":"/"}'
    resources = b'{"pids":{"limit":64},"memory":{"limit":16777216}}'
    requests = {
        "check": ("Check", b""),
        "version": ("Version", b""),
        "destroy": ("DestroySandbox", msg((1, "sb1"))),
        "create": ("CreateContainer", msg((1, "c1"), (2, spec), (3, "c1/rootfs"), (4, True))),
        "create-escape": ("CreateContainer", msg((1, "c1"), (2, spec), (3, "a/b/deep/outside"))),
        "create-noprocess": ("CreateContainer", msg((1, "c1"), (2, b"{}"), (3, "c1/rootfs"))),
        "start": ("StartContainer", msg((1, "c1"))),
        "start-badid": ("StartContainer", msg((1, "../c1"))),
        "remove": ("RemoveContainer", msg((1, "c1"), (2, 5))),
        "exec": ("ExecProcess", msg((1, "c1"), (2, "e1"), (3, process), (4, True))),
        "signal": ("SignalProcess", msg((1, "c1"), (2, "e1"), (3, 15))),
        "signal-all-rt": ("SignalProcess", msg((1, "c1"), (3, 40), (4, True))),
        "wait": ("WaitProcess", msg((1, "c1"))),
        "read-stdout": ("ReadStdout", msg((1, "c1"), (3, 4096))),
        "read-stderr": ("ReadStderr", msg((1, "c1"), (2, "e1"), (3, 1 << 20))),
        "write-stdin": ("WriteStdin", msg((1, "c1"), (3, b"hello\n"))),
        "close-stdin": ("CloseStdin", msg((1, "c1"), (2, "e1"))),
        "resize": ("TtyWinResize", msg((1, "c1"), (3, 40), (4, 100))),
        "stats": ("StatsContainer", msg((1, "c1"))),
        "update": ("UpdateContainer", msg((1, "c1"), (2, resources))),
        "pause": ("PauseContainer", msg((1, "c1"))),
        "resume": ("ResumeContainer", msg((1, "c1/x"))),
        "processes": ("ListProcesses", msg((1, "c1"))),
        "network": ("ConfigureNetwork", msg(
            (1, msg((1, "eth0"), (2, "02:42:ac:11:00:02"), (3, 1500),
                    (4, msg((1, "172.17.0.2"), (2, 16))))),
            (2, msg((2, "172.17.0.1"), (3, "eth0"))))),
        "network-dual-stack": ("ConfigureNetwork", msg(
            (1, msg((1, "eth0"), (2, "02:42:ac:11:00:02"), (3, 1500),
                    (4, msg((1, "172.17.0.2"), (2, 16))),
                    (4, msg((1, "fd00:77::2"), (2, 64))))),
            (2, msg((2, "172.17.0.1"), (3, "eth0"))),
            (2, msg((2, "fd00:77::1"), (3, "eth0"), (4, True))),
            (2, msg((1, "fd00:99::/48"), (3, "eth0"), (4, True))))),
    }
    write("request_decode", {name: bytes([RPCS.index(rpc)]) + payload
                             for name, (rpc, payload) in requests.items()})
    paths = ["c1", "web-1.v2_x", "c1/rootfs", "./a//b/.", "in_rel/c", "in_abs/b",
             "a/b/top/a/file", "self/self/a", "up/outside/secret", "abs/etc",
             "out/secret", "evil/x", "a/b/deep/base-evil", "a/esc", "zero", "proc",
             "loop1", "dangling", "a/../a", "/etc", ".."]
    tty = spec.replace(b'"terminal": false', b'"terminal": true')
    write("oci_json", {"spec": spec, "spec-tty": tty, "process": process, "resources": resources,
                       "empty-object": b"{}", "not-json": b"{x"})
    write("path_handling", {f"p{i:02}": p.encode() for i, p in enumerate(paths)})


def write(target, seeds):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
