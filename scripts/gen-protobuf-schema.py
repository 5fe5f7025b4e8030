#!/usr/bin/env python3
"""Generate apiserver/src/protobuf/schema.rs, the table the Kubernetes protobuf decoder walks.

Three inputs, each for what only it knows:

* k8s-pb (the prost-generated Kubernetes protobuf bindings, a crates.io crate): every message,
  its fields' tag numbers, wire kinds, labels and message types. Downloaded from crates.io unless
  --k8s-pb points at an extracted copy. Version K8S_PB_VERSION is the newest whose protos are
  Kubernetes 1.33 (0.7.0 and 0.8.0 carry the same 1.33 protos; 0.9.0 is 1.34).
* k8s-openapi 0.29's v1_33 sources (from the cargo registry, --k8s-openapi to override): the real
  JSON property names (prost's snake_case is lossy: `podIPs` -> `pod_i_ps`), which properties are
  required, and which (apiVersion, kind) pairs exist and which Go type each one is.
* kubectl 1.33 (--kubectl), a Go binary that carries the runtime type descriptors of the Go API
  structs: for each field its `json:` tag (name, omitempty) and whether it is a pointer. The Go
  protobuf marshaller writes every non-pointer scalar field, even when zero (an empty
  generateName, `generation: 0`), and the Go JSON encoder then drops the zero ones whose tag says
  omitempty. Only a pointer (`replicas *int32`) keeps a zero that was on the wire. So the decoder
  needs, per scalar field, "omit when zero" = omitempty and not a pointer. Messages kubectl does
  not link (apiextensions, apiregistration) fall back to the API conventions: a required field
  keeps its zero, an optional string or bytes field drops it, an optional number or bool keeps it.

The output is deterministic for the same inputs. Python 3 standard library only.

Usage: scripts/gen-protobuf-schema.py [--k8s-pb DIR] [--k8s-openapi DIR] [--kubectl PATH] [--out FILE]
"""

import argparse
import glob
import io
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections import OrderedDict

K8S_PB_VERSION = "0.8.0"
K8S_OPENAPI_VERSION = "0.29.0"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "apiserver", "src", "protobuf", "schema.rs")
DEFAULT_KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"

META = "k8s.io.apimachinery.pkg.apis.meta.v1"
APIEXT = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1"
# Messages whose JSON is not an object of their fields (see the Special enum in mod.rs).
SPECIALS = {
    f"{META}.Time": "Time",
    f"{META}.MicroTime": "MicroTime",
    f"{META}.Duration": "Duration",
    f"{META}.FieldsV1": "RawJson",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "RawJson",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": "Quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    f"{APIEXT}.JSON": "RawJson",
    f"{APIEXT}.JSONSchemaPropsOrBool": "SchemaOrBool",
    f"{APIEXT}.JSONSchemaPropsOrArray": "SchemaOrArray",
    f"{APIEXT}.JSONSchemaPropsOrStringArray": "SchemaOrStringArray",
}
# Specials whose fields the decoder never reads from the table (it knows their layout).
OPAQUE_SPECIALS = {"Time", "MicroTime", "Duration", "RawJson", "Quantity", "IntOrString"}
# Kinds every group version accepts as a body (apimachinery registers them everywhere).
META_KINDS = ["DeleteOptions", "CreateOptions", "UpdateOptions", "PatchOptions", "GetOptions",
              "ListOptions", "Status"]

# Go facts for the few scalar fields of linked-in-nowhere messages (kubectl does not link the
# apiextensions and apiregistration types) where the API conventions guess wrong, from their
# v0.33 types.go: True = a pointer (a zero on the wire is kept), False = omitempty non-pointer.
GO_OVERRIDES = {
    f"{APIEXT}.JSONSchemaProps": {
        "$ref": True, "x-kubernetes-list-type": True, "x-kubernetes-map-type": True,
        "exclusiveMaximum": False, "exclusiveMinimum": False, "uniqueItems": False,
        "nullable": False, "x-kubernetes-embedded-resource": False,
        "x-kubernetes-int-or-string": False,
    },
    f"{APIEXT}.CustomResourceDefinitionVersion": {"deprecationWarning": True,
                                                  "deprecated": False},
    f"{APIEXT}.CustomResourceDefinitionSpec": {"preserveUnknownFields": False},
    f"{APIEXT}.CustomResourceColumnDefinition": {"priority": False},
    f"{APIEXT}.WebhookClientConfig": {"url": True},
    f"{APIEXT}.ValidationRule": {"reason": True},
    "k8s.io.kube_aggregator.pkg.apis.apiregistration.v1.APIServiceSpec": {
        "insecureSkipTLSVerify": False},
}

SCALARS = {"string": "Str", "bool": "Bool", "int32": "I32", "int64": "I64", "double": "F64",
           "float": "F32", "bytes": "Bytes"}


def log(msg):
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------- k8s-pb

def fetch_k8s_pb(version, dest):
    url = f"https://static.crates.io/crates/k8s-pb/k8s-pb-{version}.crate"
    log(f"downloading {url}")
    with urllib.request.urlopen(url) as r:
        data = r.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        t.extractall(dest, filter="data")
    return os.path.join(dest, f"k8s-pb-{version}")


FIELD_RE = re.compile(r"#\[prost\((?P<attr>[^\]]*)\)\]\s*pub (?:r#)?(?P<name>\w+):(?P<ty>.*?)"
                      r",\s*\n(?=\s*(?:///|#\[|$))", re.S)
STRUCT_RE = re.compile(r"^pub struct (\w+) \{(?:\}|\n(.*?)^\})", re.S | re.M)


def resolve(path, module):
    """Absolute proto name of a Rust type path written inside `module` (a list of parts)."""
    parts = path.split("::")
    mod = list(module)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    return ".".join(["k8s.io", *mod, *parts])


def inner_type(ty):
    """The message path inside Option<..>, Vec<..>, Box<..>, or a BTreeMap's value type."""
    ty = re.sub(r"\s+", "", ty).replace(",>", ">")
    m = re.fullmatch(r"::prost::alloc::collections::BTreeMap<[^,]+,(.+)>", ty)
    if m:
        return m.group(1)
    while True:
        m = re.fullmatch(r"(?:::core::option::Option|::prost::alloc::vec::Vec|"
                         r"::prost::alloc::boxed::Box)<(.+)>", ty)
        if not m:
            return ty
        ty = m.group(1)


def parse_k8s_pb(root):
    """proto name -> OrderedDict(tag -> field dict), in source order."""
    messages = {}
    for path in sorted(glob.glob(os.path.join(root, "src", "**", "mod.rs"), recursive=True)):
        module = os.path.relpath(os.path.dirname(path), os.path.join(root, "src")).split(os.sep)
        src = open(path, encoding="utf-8").read()
        for sm in STRUCT_RE.finditer(src):
            name, body = sm.group(1), sm.group(2) or ""
            fields = OrderedDict()
            for fm in FIELD_RE.finditer(body):
                attr, rust, ty = fm.group("attr"), fm.group("name"), fm.group("ty")
                tag = int(re.search(r'tag\s*=\s*"(\d+)"', attr).group(1))
                f = {"rust": rust, "repeated": ", repeated" in attr}
                mm = re.match(r'btree_map\s*=\s*"string,\s*(\w+)"', attr)
                if mm:
                    v = mm.group(1)
                    f["kind"] = "map"
                    f["value"] = (resolve(inner_type(ty), module) if v == "message" else v)
                else:
                    kind = attr.split(",")[0].split("=")[0].strip()
                    f["kind"] = kind
                    if kind == "message":
                        f["message"] = resolve(inner_type(ty), module)
                    elif kind not in SCALARS:
                        raise SystemExit(f"{path}: {name}.{rust}: unknown prost kind {attr!r}")
                fields[tag] = f
            messages[".".join(["k8s.io", *module, name])] = fields
    return messages


# ---------------------------------------------------------------- k8s-openapi

def parse_k8s_openapi(root):
    """(types, kinds): proto name -> {json names, required json names}; [(apiVersion, kind, proto)]."""
    types, kinds = {}, []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.rs"), recursive=True)):
        src = open(path, encoding="utf-8").read()
        m = re.match(r"// Generated from definition (\S+)", src)
        if not m:
            continue
        proto = "k8s.io." + m.group(1).removeprefix("io.k8s.").replace("-", "_")
        key_to_json = {k: j for j, k in re.findall(r'"([^"]+)" => Field::Key_(\w+),', src)}
        required = set()
        sm = re.search(r"^pub struct \w+ \{\n(.*?)^\}", src, re.S | re.M)
        if sm:
            for rust, ty in re.findall(r"^    pub (?:r#)?(\w+): (.*),$", sm.group(1), re.M):
                if not ty.startswith("Option<") and rust in key_to_json:
                    required.add(key_to_json[rust])
        types[proto] = {"json": set(key_to_json.values()), "required": required}
        av = re.search(r'const API_VERSION: &\'static str = "([^"]+)";', src)
        kd = re.search(r'const KIND: &\'static str = "([^"]+)";', src)
        if av and kd:
            kinds.append((av.group(1), kd.group(1), proto))
    return types, kinds


# ---------------------------------------------------------------- kubectl's Go type descriptors

class GoBinary:
    """Reads the Go runtime type descriptors (abi.StructType) of a non-PIE amd64 ELF Go binary.

    Layout (Go 1.20+): abi.Type is 48 bytes with Kind at byte 23, TFlag at 20 and the NameOff
    of its string at 40; abi.StructType adds PkgPath (8) and Fields []StructField (24) and is
    followed by abi.UncommonType (PkgPath NameOff first) when TFlag&1; a StructField is
    {Name *byte, Typ *Type, Offset uintptr}. A name is a flag byte (bit 1: has tag), a varint
    length, the bytes, then the tag the same way. Struct types are found by scanning .rodata for
    a Fields slice header whose entries all decode.
    """

    def __init__(self, path):
        self.data = open(path, "rb").read()
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2:
            raise ValueError("not a 64-bit ELF file")
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
        self.secs = []
        for i in range(shnum):
            name, typ, _flags, addr, off, size = struct.unpack_from("<IIQQQQ", d, shoff + i * shentsize)
            self.secs.append((name, typ, addr, off, size))
        strtab = self.secs[shstrndx][3]
        named = {d[strtab + s[0]:d.index(b"\0", strtab + s[0])].decode(): s for s in self.secs}
        _, _, self.ro_addr, self.ro_off, self.ro_size = named[".rodata"]

    def off(self, va):
        for _, typ, addr, off, size in self.secs:
            if typ != 8 and addr and addr <= va < addr + size:  # 8 = SHT_NOBITS
                return va - addr + off
        return None

    def varint(self, o):
        v = s = 0
        while True:
            b = self.data[o]
            o += 1
            v |= (b & 0x7F) << s
            s += 7
            if b < 0x80:
                return v, o

    def name(self, va):
        o = self.off(va)
        if o is None:
            return None
        flags = self.data[o]
        n, p = self.varint(o + 1)
        text = self.data[p:p + n].decode("utf-8", "replace")
        tag = ""
        if flags & 2:
            t, p2 = self.varint(p + n)
            tag = self.data[p2:p2 + t].decode("utf-8", "replace")
        return text, tag

    def structs(self):
        """Yield (package path, type name, [(field name, tag, go kind)])."""
        ro = self.data[self.ro_off:self.ro_off + self.ro_size]
        words = struct.unpack_from(f"<{len(ro) // 8}Q", ro)
        lo, hi = self.ro_addr, self.ro_addr + self.ro_size
        for i in range(7, len(words) - 2):
            p, n, c = words[i], words[i + 1], words[i + 2]
            if n == 0 or n != c or n > 1000 or not lo <= p < hi or (p - lo) % 8:
                continue
            t0 = i - 7
            if (words[t0 + 2] >> 56) & 0x1F != 25:  # Kind_ byte: Struct
                continue
            fo = (p - lo) // 8
            if fo + 3 * n > len(words):
                continue
            fields = []
            for k in range(n):
                nm = self.name(words[fo + 3 * k])
                to = self.off(words[fo + 3 * k + 1])
                if nm is None or to is None:
                    fields = None
                    break
                fields.append((nm[0], nm[1], self.data[to + 23] & 0x1F))
            if not fields or not any('protobuf:"' in f[1] for f in fields):
                continue
            tflag = (words[t0 + 2] >> 32) & 0xFF
            tn = self.name(lo + (words[t0 + 5] & 0xFFFFFFFF))
            if not tn or not tflag & 1:
                continue
            type_name = tn[0][1:] if tflag & 2 else tn[0]
            pko = int.from_bytes(ro[(t0 + 10) * 8:(t0 + 10) * 8 + 4], "little")
            pk = self.name(lo + pko) if pko else None
            if pk:
                yield pk[0], type_name.split(".")[-1], fields


GO_PTR, GO_STRING = 22, 24


def go_field_info(kubectl):
    """proto name -> {tag: (json name, omitempty, is pointer)} from kubectl's Go structs."""
    info = {}
    for pkg, name, fields in GoBinary(kubectl).structs():
        if not pkg.startswith("k8s.io/"):
            continue
        proto = pkg.replace("/", ".").replace("-", "_") + "." + name
        out = {}
        for _fname, tag, kind in fields:
            pm = re.search(r'protobuf:"\w+,(\d+),', tag)
            jm = re.search(r'json:"([^"]*)"', tag)
            if not pm or not jm:
                continue
            jparts = jm.group(1).split(",")
            out[int(pm.group(1))] = (jparts[0], "omitempty" in jparts[1:], kind == GO_PTR)
        if out:
            info[proto] = out
    return info


# ---------------------------------------------------------------- assembly

def norm(s):
    return re.sub(r"[^a-z0-9]", "", s.lower())


def lower_camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def ident(proto):
    return re.sub(r"[^A-Za-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2",
                                                 proto.removeprefix("k8s.io."))).upper()


def is_inline(f, parent_openapi, messages):
    """Whether a message field is an embedded struct: all its fields are the parent's in JSON."""
    child = messages.get(f.get("message", ""), {})
    names = {norm(j) for j in parent_openapi["json"]}
    return bool(child) and all(norm(c["rust"]) in names for c in child.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k8s-pb", help=f"extracted k8s-pb-{K8S_PB_VERSION} (default: download)")
    ap.add_argument("--k8s-openapi", help="k8s-openapi src/v1_33 (default: the cargo registry)")
    ap.add_argument("--kubectl", default=DEFAULT_KUBECTL, help="kubectl 1.33 binary")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    pb_root = args.k8s_pb or fetch_k8s_pb(K8S_PB_VERSION, tmp.name)
    oa_root = args.k8s_openapi
    if not oa_root:
        home = os.path.expanduser("~/.cargo/registry/src")
        found = sorted(glob.glob(f"{home}/*/k8s-openapi-{K8S_OPENAPI_VERSION}/src/v1_33"))
        if not found:
            raise SystemExit(f"k8s-openapi {K8S_OPENAPI_VERSION} not in {home}; "
                             "run `cargo fetch` or pass --k8s-openapi")
        oa_root = found[0]
    kubectl_version = subprocess.run([args.kubectl, "version", "--client"], capture_output=True,
                                     text=True, check=True).stdout.splitlines()[0].split()[-1]

    messages = parse_k8s_pb(pb_root)
    types, kinds = parse_k8s_openapi(oa_root)
    go = go_field_info(args.kubectl)
    # If the descriptor layout ever changes, fail loudly rather than fall back everywhere.
    if (go.get(f"{META}.ObjectMeta", {}).get(2) != ("generateName", True, False)
            or go.get("k8s.io.api.apps.v1.DeploymentSpec", {}).get(1) != ("replicas", True, True)):
        raise SystemExit(f"could not read Go struct tags from {args.kubectl}")
    # k8s-pb re-cases some message names (AWSElasticBlockStoreVolumeSource ->
    # AwsElasticBlockStoreVolumeSource); the others spell them as Kubernetes does. Match
    # case-insensitively and keep the Kubernetes spelling for messages.
    real_name = {}
    for name in list(types) + list(go):
        real_name.setdefault(name.lower(), name)
    types = {k.lower(): v for k, v in types.items()}
    go = {k.lower(): v for k, v in go.items()}
    by_lower = {m.lower(): m for m in messages}
    kinds = [(av, k, by_lower.get(p.lower(), p)) for av, k, p in kinds]
    log(f"k8s-pb: {len(messages)} messages; k8s-openapi: {len(types)} types, {len(kinds)} kinds;"
        f" kubectl: {len(go)} Go structs")

    # Top-level (apiVersion, kind) -> message, plus each kind's List where the package has one.
    top = []
    for av, kind, proto in kinds:
        if proto not in messages:
            log(f"warning: {av} {kind}: no protobuf message {proto}")
            continue
        top.append((av, kind, proto))
        lst = proto + "List"
        if lst in messages and not kind.endswith("List"):
            top.append((av, kind + "List", lst))
    top = sorted(set(top))
    meta_kinds = [(k, f"{META}.{k}") for k in META_KINDS]

    specials = {by_lower[k.lower()]: v for k, v in SPECIALS.items() if k.lower() in by_lower}

    # Messages reachable from the top-level ones.
    reach, stack = set(), [p for *_, p in top] + [p for _, p in meta_kinds]
    while stack:
        m = stack.pop()
        if m in reach:
            continue
        if m not in messages:
            raise SystemExit(f"message {m} referenced but not in k8s-pb")
        reach.add(m)
        if specials.get(m) in OPAQUE_SPECIALS:
            continue
        for f in messages[m].values():
            ref = f.get("message") or (f["value"] if f["kind"] == "map" else None)
            if ref and ref not in SCALARS:
                stack.append(ref)

    # A message that is a list in JSON (`type ExtraValue []string`): one repeated `items` field
    # and no definition of its own in the OpenAPI schema.
    for m in reach:
        fs = messages[m]
        if (m.lower() not in types and m not in specials and len(fs) == 1
                and next(iter(fs.values()))["rust"] == "items"
                and next(iter(fs.values()))["repeated"]):
            specials[m] = "ListWrapper"

    stats = {"fields": 0, "name_openapi": 0, "name_go": 0, "name_fallback": 0,
             "inline": 0, "presence_go": 0, "presence_override": 0, "presence_convention": 0,
             "go_name_disagrees": 0}
    overrides = {k.lower(): v for k, v in GO_OVERRIDES.items()}
    fallback_names, go_names = [], []
    out = []
    for m in sorted(reach):
        special = specials.get(m, "None")
        fields = [] if special in OPAQUE_SPECIALS else messages[m].items()
        oa = types.get(m.lower(), {"json": set(), "required": set()})
        by_norm = {norm(j): j for j in oa["json"]}
        gof = go.get(m.lower(), {})
        lines = []
        for tag, f in sorted(fields):
            stats["fields"] += 1
            rust = f["rust"]
            g = gof.get(tag)
            flags = []
            if special == "ListWrapper":
                json_name = "items"  # never shown: the list itself is the JSON
            elif norm(rust) in by_norm:
                json_name = by_norm[norm(rust)]
                stats["name_openapi"] += 1
                if g and g[0] != json_name:
                    stats["go_name_disagrees"] += 1
                    log(f"note: {m}.{rust}: OpenAPI says {json_name!r}, Go says {g[0]!r}")
            elif g and g[0]:
                json_name = g[0]
                stats["name_go"] += 1
                go_names.append(f"{m}.{json_name}")
            elif (g and g[0] == "") or (not g and is_inline(f, oa, messages)):
                # An embedded Go struct (`json:",inline"`): its fields are the parent's in JSON.
                json_name = ""
                flags.append("INLINE")
                stats["inline"] += 1
            else:
                json_name = lower_camel(rust)
                stats["name_fallback"] += 1
                fallback_names.append(f"{m}.{json_name}")
            if f["repeated"]:
                flags.append("REP")
            kind = f["kind"]
            if kind == "map":
                v = f["value"]
                kind_rs = {"string": "MapStr", "bytes": "MapBytes"}.get(v) or f"MapMsg(&{ident(v)})"
            elif kind == "message":
                kind_rs = f"Msg(&{ident(f['message'])})"
            else:
                kind_rs = SCALARS[kind]
                if not f["repeated"]:
                    if g:
                        omit = g[1] and not g[2]
                        stats["presence_go"] += 1
                    elif json_name in overrides.get(m.lower(), {}):
                        omit = not overrides[m.lower()][json_name]
                        stats["presence_override"] += 1
                    else:
                        omit = json_name not in oa["required"] and kind in ("string", "bytes")
                        stats["presence_convention"] += 1
                    if omit:
                        flags.append("OMIT_ZERO")
            lines.append(f'        f({tag}, "{json_name}", {kind_rs}, {"|".join(flags) or "0"}),')
        out.append(f"pub(super) static {ident(m)}: Message = Message {{\n"
                   f'    name: "{real_name.get(m.lower(), m)}",\n'
                   f"    special: Special::{special},\n"
                   + ("    fields: &[],\n" if not lines else
                      "    fields: &[\n" + "\n".join(lines) + "\n    ],\n")
                   + "};\n")

    header = f"""//! The Kubernetes protobuf schema the decoder walks: every message reachable from a built-in
//! kind, with each field's tag, JSON name, wire kind and presence rule.
//!
//! Generated by scripts/gen-protobuf-schema.py; do not edit.
//! Sources: k8s-pb {K8S_PB_VERSION} (Kubernetes 1.33 protos), k8s-openapi {K8S_OPENAPI_VERSION} v1_33
//! (JSON names), kubectl {kubectl_version}'s Go type descriptors (omitempty and pointer fields).
//! {len(reach)} messages, {stats['fields']} fields; JSON names from OpenAPI {stats['name_openapi']}, \
from Go tags {stats['name_go']},
//! lowerCamelCase fallback {stats['name_fallback']}, inline {stats['inline']}; zero-value presence from Go
//! {stats['presence_go']}, from the generator's overrides {stats['presence_override']}, from API conventions
//! {stats['presence_convention']}.

#![allow(clippy::unreadable_literal)]

use super::Kind::*;
use super::{{f, Message, Special, INLINE, OMIT_ZERO, REP}};

/// `(apiVersion, kind)` of every built-in kind (and its List) to its message.
pub(super) static KINDS: &[(&str, &str, &Message)] = &[
""" + "".join(f'    ("{av}", "{k}", &{ident(p)}),\n' for av, k, p in top) + """];

/// Kinds every group version accepts as a body.
pub(super) static META_KINDS: &[(&str, &Message)] = &[
""" + "".join(f'    ("{k}", &{ident(p)}),\n' for k, p in meta_kinds) + "];\n\n"

    with open(args.out, "w") as fh:
        fh.write(header + "\n".join(out))
    log(f"wrote {args.out}: {len(top)} kinds, {len(reach)} messages, {stats}")
    log(f"{len(go_names)} names only from Go tags, e.g. " + ", ".join(go_names[:8]))
    if fallback_names:
        log(f"{len(fallback_names)} fields fell back to lowerCamelCase: "
            + ", ".join(fallback_names[:20]) + (" ..." if len(fallback_names) > 20 else ""))


if __name__ == "__main__":
    main()
