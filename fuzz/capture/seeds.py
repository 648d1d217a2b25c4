"""Split recorded F3 traffic into the seed corpus of each fuzz target (see capture.py).

The input layouts are those of the targets (fuzz/fuzz_targets/*.rs): records are a big-endian
u16 length and that many bytes (fuzz/src/records.rs).
"""

import base64
import hashlib
import io
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import msgpack

# ref ids of the objects the download_request target serves (fuzz/src/objects.rs)
HARNESS_REFS = {"file": "Rfile", "tensors": "Rtensors", "arrays": "Rarrays", "bytes": "Rbytes"}
# consumer selector of the download_reply target
CONSUMER = {"bytes": 0, "file": 1, "tensors": 2, "arrays": 3}
DATA, HELLO = 1, 4


def records(parts):
    out = bytearray()
    for p in parts:
        p = bytes(p[:0xFFFF])
        out += struct.pack(">H", len(p)) + p
    return bytes(out)


def frames(stream):
    """(type, header bytes, payload bytes, raw frame) of each complete frame."""
    out, pos = [], 0
    while pos + 16 <= len(stream):
        length, hl, ftype = struct.unpack(">IHB", stream[pos : pos + 7])
        if length < 16 or pos + length > len(stream):
            break
        raw = bytes(stream[pos : pos + length])
        out.append((ftype, raw[16 : 16 + hl], raw[16 + hl :], raw))
        pos += length
    return out


def unpack(b):
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


def fobs_sections(payload):
    out, pos = [], 0
    while pos + 10 <= len(payload):
        marker, dot, size = struct.unpack(">BBQ", payload[pos : pos + 10])
        out.append((marker, dot, payload[pos + 10 : pos + 10 + size]))
        pos += 10 + size
    return out


def fobs_pack(sections):
    return b"".join(struct.pack(">BBQ", m, d, len(b)) + b for m, d, b in sections)


def messages(stream):
    """Logical messages of one direction: (headers dict, payload bytes, encoding, frame parts),
    with `sm__*` streams reassembled."""
    out, streams = [], {}
    for ftype, hb, payload, raw in frames(stream):
        if ftype != DATA or not hb:
            continue
        h = unpack(hb)
        if h.get("cn__channel") == "sm__STREAM":
            if h.get("cn__topic") != "sm__DATA":
                continue
            s = streams.setdefault(h.get("sm__id"), {"chunks": {}, "h": h})
            s["chunks"][h.get("sm__sq", 0)] = payload
            if h.get("sm__dt") == 2:
                blob = b"".join(s["chunks"][k] for k in sorted(s["chunks"]))
                out.append((s["h"], blob, h.get("sm__pe"), None))
            continue
        out.append((h, payload, h.get("cn__payload_encoding"), None))
    return out


def main_value(payload, enc):
    if enc != "fobs":
        return None
    secs = fobs_sections(payload)
    if not secs or secs[0][0] != 100:
        return None
    try:
        return unpack(secs[0][2])
    except Exception:
        return None


class Seeds:
    def __init__(self, out):
        self.out = out
        self.seen = set()

    def add(self, target, data, cap_bytes=None):
        if cap_bytes is not None and len(data) > cap_bytes:
            return
        key = (target, hashlib.sha1(data).hexdigest())
        if key in self.seen:
            return
        self.seen.add(key)
        d = os.path.join(self.out, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, key[1][:16]), "wb") as fh:
            fh.write(data)


def item_kind(blob):
    if blob[:4] == b"PK\x03\x04":
        return "arrays"
    if len(blob) > 9 and blob[8:9] == b"{":
        return "tensors"
    return None


def rewrite_ref(payload, refs):
    """The request with its captured ref id replaced by the harness's id for the same kind."""
    secs = fobs_sections(payload)
    v = unpack(secs[0][2])
    for kind, rid in refs.items():
        if v.get("ref_id") == rid:
            v["ref_id"] = HARNESS_REFS[kind]
    secs[0] = (100, 0, msgpack.packb(v, use_bin_type=True))
    return fobs_pack(secs), v


def shrink_datums(payload):
    secs = fobs_sections(payload)
    return fobs_pack([(m, d, b if m == 100 else b[:16 + 64]) for m, d, b in secs])


def write_all(captures, tickets, manifests, part_seeds, out):
    s = Seeds(out)
    write_captures(s, captures)
    write_ferry(s, tickets, manifests, part_seeds)
    summary(out)


def write_captures(s, captures):
    """The seeds cut from recorded F3 traffic (every target but ticket, manifest, part_record)."""
    headers_keys = set()
    for name, conns, refs in captures:
        for c2s, s2c in conns:
            for direction in (c2s, s2c):
                fr = frames(direction)
                # f3_frames: the first frames of each direction as the wire carries them
                head, size = [], 0
                for _, _, _, raw in fr:
                    if size + len(raw) > 12 * 1024:
                        break
                    head.append(raw)
                    size += len(raw)
                if head:
                    s.add("f3_frames", b"".join(head))
                for ftype, hb, payload, raw in fr:
                    if hb:
                        h = unpack(hb)
                        shape = (h.get("cn__msg_type"), h.get("cn__channel"), h.get("cn__topic"), h.get("sm__dt"),
                                 tuple(sorted(h)))
                        if shape not in headers_keys:
                            headers_keys.add(shape)
                            s.add("headers", hb)
                    if ftype == HELLO:
                        s.add("msgpack", payload)
            # cell_stream: what the connecting peer sent, one record per frame
            parts, size = [], 0
            for ftype, hb, payload, raw in frames(c2s):
                if len(payload) > 16 * 1024:
                    continue
                rec = bytes([ftype]) + struct.pack(">H", len(hb)) + hb + payload
                if size + len(rec) > 24 * 1024:
                    break
                parts.append(rec)
                size += len(rec) + 2
            if parts:
                s.add("cell_stream", records(parts))
            # payloads: FOBS containers, main bodies, download requests and replies
            requests, replies = [], []
            for h, payload, enc, _ in messages(c2s) + messages(s2c):
                if enc == "fobs":
                    secs = fobs_sections(payload)
                    if len(secs) > 1:
                        s.add("fobs", shrink_datums(payload))
                    else:
                        s.add("fobs", payload, cap_bytes=8 * 1024)
                    if secs and secs[0][0] == 100:
                        s.add("msgpack", secs[0][2], cap_bytes=8 * 1024)
                v = main_value(payload, enc)
                if isinstance(v, dict) and "ref_id" in v:
                    requests.append(payload)
                elif isinstance(v, dict) and "status" in v:
                    replies.append((payload, v))
            if requests:
                recs = []
                for p in requests[:48]:
                    p2, v = rewrite_ref(p, refs)
                    recs.append(b"\x00" + p2)
                    # one seed per request shape too, from each of the two receivers
                    s.add("download_request", b"\x00" + records([b"\x00" + p2]))
                    s.add("download_request", b"\x01" + records([b"\x08" + p2]))
                s.add("download_request", b"\x00" + records(recs))
            if replies:
                by_kind = {}
                for p, v in replies:
                    data = v.get("data")
                    kind = "file" if isinstance(data, (bytes, bytearray)) else None
                    if isinstance(data, list) and data:
                        kind = item_kind(data[0])
                        for blob in data:
                            k = item_kind(blob)
                            if k == "tensors":
                                s.add("safetensors_items", b"\x80" + records([blob]))
                            elif k == "arrays":
                                s.add("npz_items", b"\x80" + records([blob]))
                                s.add("npz_items", b"\x00" + blob)
                                with zipfile.ZipFile(io.BytesIO(blob)) as z:
                                    for n in z.namelist():
                                        s.add("npz_items", b"\x40" + z.read(n))
                        if kind == "tensors":
                            s.add("safetensors_items", bytes([0x80 | (len(data) - 1) & 3]) + records(data))
                    by_kind.setdefault(kind, []).append(p)
                eof = [p for p, v in replies if v.get("status") != "ok"]
                for kind, ps in by_kind.items():
                    if kind is None:
                        continue
                    seq = ps[:2] + eof[:1]
                    s.add("download_reply", bytes([CONSUMER[kind]]) + records([b"\x00" + p for p in seq]),
                          cap_bytes=24 * 1024)
                    # windowed (window 8) when the sender advertised a plan
                    if any("ferry_plan" in v for p, v in replies):
                        s.add("download_reply", bytes([CONSUMER[kind] | 0x1C]) +
                              records([b"\x00" + p for p in seq]), cap_bytes=24 * 1024)
    # a whole safetensors file and a whole .npz written by Python
    py = os.environ.get("FERRY_INTEROP_PYTHON") or sys.executable
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "..", "..", "tests", "py", "make_safetensors.py")
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "m.safetensors")
        subprocess.run([py, script, "--out", f, "--count", "4", "--metadata", "format=pt"], check=True,
                       stdout=subprocess.DEVNULL)
        with open(f, "rb") as fh:
            s.add("safetensors_items", b"\x00" + fh.read(), cap_bytes=32 * 1024)


COMPACT_PREFIX = "ferry1"


def write_ferry(s, tickets, manifests, part_seeds):
    """The seeds of what ferry itself writes: tickets in both forms (and each compact ticket's
    checksummed payload, which the ticket target takes after a NUL byte), set manifests as
    served, resume records."""
    for t in tickets:
        s.add("ticket", t.encode())
        if t.startswith(COMPACT_PREFIX):
            raw = base64.b32decode(pad32(t[len(COMPACT_PREFIX):].upper()))
            s.add("ticket", b"\x00" + raw[:-4])
    for m in manifests:
        s.add("manifest", m)
    for record, part in part_seeds:
        content = bytes((i * 31 + 5) & 0xFF for i in range(3000))
        n = len(part)
        rest = [content[i : i + 1024] for i in range(min(n, 3000), 3000, 1024)]
        # pinned (bit 0) and not; a part of other content refused or discarded (bit 1)
        for sel in (0, 1, 3):
            s.add("part_record", bytes([sel]) + records([record, part] + rest))


def pad32(b32):
    return b32 + "=" * (-len(b32) % 8)


def summary(out):
    for target in sorted(os.listdir(out)):
        files = os.listdir(os.path.join(out, target))
        total = sum(os.path.getsize(os.path.join(out, target, f)) for f in files)
        print(f"{target:<20} {len(files):>4} seeds {total:>8} bytes")
