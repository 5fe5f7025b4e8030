//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded to the JSON
//! object Kubernetes would see.
//!
//! kubectl >= 1.31 sends the bodies of its typed `create` subcommands only as protobuf. This
//! module owns that wire format: the `k8s\0` envelope (a `runtime.Unknown`), a generic protobuf
//! wire-format reader, and the translation to JSON driven by the generated [`schema`] table
//! (`scripts/gen-protobuf-schema.py`). The rest of the server only ever sees JSON.
//!
//! The JSON is what Go's `encoding/json` would print for the Go object the Go protobuf decoder
//! builds, because that is what the same request sent as JSON would have carried:
//! - Go's marshaller writes every non-pointer scalar field, zero or not, so a zero scalar on the
//!   wire is dropped when its Go field is `omitempty` and not a pointer (`generateName: ""`), and
//!   kept otherwise (`replicas: 0`, `value: 0`). A field absent from the wire is absent.
//! - An empty struct-valued field is `{}` (`status: {}`); an empty `Time` is `null`.
//! - The apimachinery types have their own JSON: `Time`/`MicroTime` are RFC 3339 strings,
//!   `Quantity` and `Duration` strings, `IntOrString` a number or string, `RawExtension`,
//!   `FieldsV1` and the CRD schema's `JSON` the JSON they carry; list wrappers (`ExtraValue`) are
//!   arrays, and an embedded Go struct's fields are its parent's.
//!
//! Input is hostile: every length is checked against what is left, nesting is bounded by
//! [`MAX_DEPTH`], and every failure is a [`ProtobufError`], never a panic.

#[rustfmt::skip]
mod schema;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How deeply messages may nest. Kubernetes objects need about 12 (a CronJob's container's
/// probe's handler); CRD schemas nest deeper, but not this deep in practice.
pub const MAX_DEPTH: usize = 64;

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be decoded. Each message is one sentence a user can act on; the
/// server returns it in a `metav1.Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the protobuf body does not start with the Kubernetes magic prefix \"k8s\\0\"")]
    MissingMagic,
    #[error("the protobuf body is truncated: a field runs past the end of its message")]
    Truncated,
    #[error("the protobuf body has a malformed varint")]
    BadVarint,
    #[error("the protobuf body has a field with number 0 or unsupported wire type {0}")]
    BadKey(u8),
    #[error("the protobuf envelope has no apiVersion and kind in its typeMeta")]
    MissingTypeMeta,
    #[error("protobuf content encoding {0:?} is not supported; send the object unencoded")]
    UnsupportedEncoding(String),
    #[error("protobuf content type {0:?} is not supported inside the envelope")]
    UnsupportedContentType(String),
    #[error("apiVersion {0:?} cannot be sent as protobuf; custom resources must be sent as JSON")]
    UnknownApiVersion(String),
    #[error("kind {kind:?} of apiVersion {api_version:?} cannot be sent as protobuf")]
    UnknownKind { api_version: String, kind: String },
    #[error("field {field:?} of {message} has protobuf wire type {wire_type}, which its type does not allow")]
    WireType {
        message: &'static str,
        field: &'static str,
        wire_type: u8,
    },
    #[error("protobuf messages are nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("{message} in the protobuf body is invalid: {reason}")]
    InvalidValue {
        message: &'static str,
        reason: String,
    },
}

type Result<T> = std::result::Result<T, ProtobufError>;

/// Decodes a Kubernetes protobuf request body to the JSON object it stands for, with
/// `apiVersion` and `kind` from the envelope.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_envelope(body, 0)
}

fn decode_envelope(body: &[u8], depth: usize) -> Result<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::MissingMagic)?;
    let (mut api_version, mut kind) = (String::new(), String::new());
    let (mut raw, mut encoding, mut content_type) = (&[][..], String::new(), String::new());
    let mut r = Reader::new(rest);
    while !r.done() {
        let (tag, wt) = r.key()?;
        match (tag, wt) {
            (1, LEN) => {
                let mut tm = Reader::new(r.bytes()?);
                while !tm.done() {
                    match tm.key()? {
                        (1, LEN) => api_version = tm.string()?,
                        (2, LEN) => kind = tm.string()?,
                        (_, wt) => tm.skip(wt)?,
                    }
                }
            }
            (2, LEN) => raw = r.bytes()?,
            (3, LEN) => encoding = r.string()?,
            (4, LEN) => content_type = r.string()?,
            (_, wt) => r.skip(wt)?,
        }
    }
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    if !encoding.is_empty() {
        return Err(ProtobufError::UnsupportedEncoding(encoding));
    }
    if !content_type.is_empty() && content_type != CONTENT_TYPE {
        return Err(ProtobufError::UnsupportedContentType(content_type));
    }
    let msg = lookup(&api_version, &kind)?;
    let mut obj = object(msg, raw, depth + 1)?;
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(obj))
}

/// The message of a top-level kind. The meta kinds (`DeleteOptions`, …) are accepted in every
/// group version Kubernetes serves, as apimachinery registers them in each.
fn lookup(api_version: &str, kind: &str) -> Result<&'static Message> {
    if let Some((_, _, m)) = schema::KINDS
        .iter()
        .find(|(av, k, _)| *av == api_version && *k == kind)
    {
        return Ok(m);
    }
    let known = api_version == "meta.k8s.io/v1"
        || schema::KINDS.iter().any(|(av, _, _)| *av == api_version);
    if !known {
        return Err(ProtobufError::UnknownApiVersion(api_version.to_string()));
    }
    schema::META_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, m)| *m)
        .ok_or_else(|| ProtobufError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })
}

// ---------------------------------------------------------------- the schema table's types

/// A protobuf message of the schema table.
#[derive(Debug)]
struct Message {
    /// The Kubernetes proto name, e.g. `k8s.io.api.apps.v1.DeploymentSpec`.
    name: &'static str,
    special: Special,
    /// Sorted by tag.
    fields: &'static [Field],
}

impl Message {
    fn field(&self, tag: u32) -> Option<&'static Field> {
        self.fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .and_then(|i| self.fields.get(i))
    }

    fn json_name(&self, tag: u32) -> &'static str {
        self.field(tag).map_or("", |f| f.json)
    }
}

/// Messages whose JSON is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    /// `metav1.Time`: seconds 1, nanos 2; RFC 3339 in UTC, whole seconds.
    Time,
    /// `metav1.MicroTime`: as Time, with six fractional digits.
    MicroTime,
    /// `metav1.Duration`: nanoseconds 1; Go's `time.Duration` string.
    // No built-in kind of Kubernetes 1.33 reaches a Duration, but the table is regenerated as
    // Kubernetes grows, and aggregated or config types use it.
    #[allow(dead_code)]
    Duration,
    /// `resource.Quantity`: the string in field 1.
    Quantity,
    /// `intstr.IntOrString`: type 1 (0 int, 1 string), intVal 2, strVal 3.
    IntOrString,
    /// Bytes in field 1 that are JSON: `RawExtension`, `FieldsV1`, apiextensions `JSON`.
    RawJson,
    /// A `repeated items = 1` wrapper that is a plain array in JSON (`ExtraValue`).
    ListWrapper,
    /// apiextensions `JSONSchemaPropsOrBool`: allows 1, schema 2.
    SchemaOrBool,
    /// apiextensions `JSONSchemaPropsOrArray`: schema 1, jSONSchemas 2.
    SchemaOrArray,
    /// apiextensions `JSONSchemaPropsOrStringArray`: schema 1, property 2.
    SchemaOrStringArray,
}

#[derive(Debug)]
struct Field {
    tag: u32,
    /// The JSON property name; empty for an inline (embedded) message.
    json: &'static str,
    kind: Kind,
    flags: u8,
}

/// `repeated`: a JSON array.
const REP: u8 = 1;
/// A zero value on the wire is dropped (a Go `omitempty` non-pointer field).
const OMIT_ZERO: u8 = 2;
/// An embedded Go struct: its fields go into the parent object.
const INLINE: u8 = 4;

/// Keeps the generated table to one short line per field.
const fn f(tag: u32, json: &'static str, kind: Kind, flags: u8) -> Field {
    Field {
        tag,
        json,
        kind,
        flags,
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Bool,
    I32,
    I64,
    F64,
    // Kubernetes protos use no `float` today; the wire format has it.
    #[allow(dead_code)]
    F32,
    Bytes,
    Msg(&'static Message),
    MapStr,
    MapBytes,
    MapMsg(&'static Message),
}

// ---------------------------------------------------------------- wire format

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(ProtobufError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let [b] = *self.take(1)? else {
                return Err(ProtobufError::Truncated);
            };
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(ProtobufError::BadVarint);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(ProtobufError::BadVarint)
    }

    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        let wt = (key & 7) as u8;
        let tag = u32::try_from(key >> 3).unwrap_or(0);
        if tag == 0 || !matches!(wt, VARINT | I64 | LEN | I32) {
            return Err(ProtobufError::BadKey(wt));
        }
        Ok((tag, wt))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| ProtobufError::Truncated)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String> {
        // Go strings may hold any bytes; its JSON encoder writes invalid UTF-8 as U+FFFD.
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn fixed64(&mut self) -> Result<[u8; 8]> {
        self.take(8)?
            .try_into()
            .map_err(|_| ProtobufError::Truncated)
    }

    fn fixed32(&mut self) -> Result<[u8; 4]> {
        self.take(4)?
            .try_into()
            .map_err(|_| ProtobufError::Truncated)
    }

    fn skip(&mut self, wt: u8) -> Result<()> {
        match wt {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            _ => Err(ProtobufError::BadKey(wt)),
        }
    }
}

// ---------------------------------------------------------------- messages to JSON

/// A decoded scalar and whether it is its type's zero value.
fn scalar(r: &mut Reader<'_>, kind: Kind, msg: &'static Message) -> Result<(Value, bool)> {
    Ok(match kind {
        Kind::Str => {
            let s = r.string()?;
            let zero = s.is_empty();
            (Value::String(s), zero)
        }
        Kind::Bytes => {
            let b = r.bytes()?;
            let s = base64::engine::general_purpose::STANDARD.encode(b);
            (Value::String(s), b.is_empty())
        }
        Kind::Bool => {
            let v = r.varint()? != 0;
            (Value::Bool(v), !v)
        }
        // Protobuf int32 is a sign-extended varint: truncation is the decoding.
        Kind::I32 => {
            let v = r.varint()? as i32;
            (Value::from(v), v == 0)
        }
        Kind::I64 => {
            let v = r.varint()? as i64;
            (Value::from(v), v == 0)
        }
        Kind::F64 => {
            let v = f64::from_le_bytes(r.fixed64()?);
            (float(v, msg)?, v == 0.0)
        }
        Kind::F32 => {
            let v = f32::from_le_bytes(r.fixed32()?);
            // Go prints a float32 by its shortest float32 form: 0.1, not 0.10000000149.
            let wide = v.to_string().parse::<f64>().unwrap_or(f64::from(v));
            (float(wide, msg)?, v == 0.0)
        }
        Kind::Msg(_) | Kind::MapStr | Kind::MapBytes | Kind::MapMsg(_) => {
            return Err(ProtobufError::InvalidValue {
                message: msg.name,
                reason: "a message field was read as a scalar".into(),
            })
        }
    })
}

/// Go's JSON prints an integral float without a fraction, so it reads back as an integer.
fn float(v: f64, msg: &'static Message) -> Result<Value> {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        return Ok(Value::from(v as i64));
    }
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| ProtobufError::InvalidValue {
            message: msg.name,
            reason: format!("{v} is not a JSON number"),
        })
}

fn wire_type_for(kind: Kind) -> u8 {
    match kind {
        Kind::Bool | Kind::I32 | Kind::I64 => VARINT,
        Kind::F64 => I64,
        Kind::F32 => I32,
        Kind::Str
        | Kind::Bytes
        | Kind::Msg(_)
        | Kind::MapStr
        | Kind::MapBytes
        | Kind::MapMsg(_) => LEN,
    }
}

fn message(msg: &'static Message, buf: &[u8], depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    match msg.special {
        Special::None => object(msg, buf, depth).map(Value::Object),
        Special::Time => time(msg, buf, false),
        Special::MicroTime => time(msg, buf, true),
        Special::Duration => {
            let mut nanos = 0;
            let mut r = Reader::new(buf);
            while !r.done() {
                match r.key()? {
                    (1, VARINT) => nanos = r.varint()? as i64,
                    (_, wt) => r.skip(wt)?,
                }
            }
            Ok(Value::String(go_duration(nanos)))
        }
        Special::Quantity => {
            // An empty Go Quantity is zero, and prints as "0".
            let mut s = "0".to_string();
            let mut r = Reader::new(buf);
            while !r.done() {
                match r.key()? {
                    (1, LEN) => s = r.string()?,
                    (_, wt) => r.skip(wt)?,
                }
            }
            Ok(Value::String(s))
        }
        Special::IntOrString => int_or_string(msg, buf),
        Special::RawJson => raw_json(msg, buf, depth),
        Special::ListWrapper => {
            let mut obj = object(msg, buf, depth)?;
            Ok(obj
                .remove(msg.json_name(1))
                .unwrap_or_else(|| Value::Array(Vec::new())))
        }
        Special::SchemaOrBool => {
            // Go: the schema if set, else the bool.
            let mut obj = object(msg, buf, depth)?;
            Ok(match obj.remove(msg.json_name(2)) {
                Some(schema) => schema,
                None => Value::Bool(obj.remove(msg.json_name(1)) == Some(Value::Bool(true))),
            })
        }
        Special::SchemaOrArray | Special::SchemaOrStringArray => {
            // Go: the list if non-empty, else the schema, else null.
            let mut obj = object(msg, buf, depth)?;
            match obj.remove(msg.json_name(2)) {
                Some(Value::Array(list)) if !list.is_empty() => Ok(Value::Array(list)),
                _ => Ok(obj.remove(msg.json_name(1)).unwrap_or(Value::Null)),
            }
        }
    }
}

fn object(msg: &'static Message, buf: &[u8], depth: usize) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while !r.done() {
        let (tag, wt) = r.key()?;
        let Some(field) = msg.field(tag) else {
            // Newer Kubernetes fields this table does not know: dropped, as Go would.
            r.skip(wt)?;
            continue;
        };
        let wrong_type = || ProtobufError::WireType {
            message: msg.name,
            field: field.json,
            wire_type: wt,
        };
        let repeated = field.flags & REP != 0;
        match field.kind {
            Kind::Msg(m) => {
                if wt != LEN {
                    return Err(wrong_type());
                }
                let v = message(m, r.bytes()?, depth + 1)?;
                if field.flags & INLINE != 0 {
                    if let Value::Object(inner) = v {
                        out.extend(inner);
                    }
                } else if repeated {
                    push(&mut out, field.json, v);
                } else {
                    out.insert(field.json.into(), v);
                }
            }
            Kind::MapStr | Kind::MapBytes | Kind::MapMsg(_) => {
                if wt != LEN {
                    return Err(wrong_type());
                }
                let (k, v) = map_entry(msg, field.kind, r.bytes()?, depth + 1)?;
                let entry = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(k, v);
                }
            }
            kind if repeated && wt == LEN && wire_type_for(kind) != LEN => {
                // A packed repeated scalar: parsers accept it whatever the schema says.
                let mut packed = Reader::new(r.bytes()?);
                while !packed.done() {
                    let (v, _) = scalar(&mut packed, kind, msg)?;
                    push(&mut out, field.json, v);
                }
            }
            kind => {
                if wt != wire_type_for(kind) {
                    return Err(wrong_type());
                }
                let (v, zero) = scalar(&mut r, kind, msg)?;
                if repeated {
                    push(&mut out, field.json, v);
                } else if zero && field.flags & OMIT_ZERO != 0 {
                    out.remove(field.json);
                } else {
                    out.insert(field.json.into(), v);
                }
            }
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, key: &str, v: Value) {
    match out.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(list) => list.push(v),
        other => *other = Value::Array(vec![v]),
    }
}

/// One `map<string, V>` entry: key 1, value 2; a missing part is its zero value.
fn map_entry(
    msg: &'static Message,
    kind: Kind,
    buf: &[u8],
    depth: usize,
) -> Result<(String, Value)> {
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => key = r.string()?,
            (2, LEN) => {
                value = Some(match kind {
                    Kind::MapMsg(m) => message(m, r.bytes()?, depth + 1)?,
                    Kind::MapBytes => scalar(&mut r, Kind::Bytes, msg)?.0,
                    _ => Value::String(r.string()?),
                })
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    let value = match (value, kind) {
        (Some(v), _) => v,
        (None, Kind::MapMsg(m)) => message(m, &[], depth + 1)?,
        (None, _) => Value::String(String::new()),
    };
    Ok((key, value))
}

fn time(msg: &'static Message, buf: &[u8], micro: bool) -> Result<Value> {
    // Go writes a zero Time as an empty message, and prints it as null.
    if buf.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, VARINT) => seconds = r.varint()? as i64,
            (2, VARINT) => nanos = r.varint()? as i32,
            (_, wt) => r.skip(wt)?,
        }
    }
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    // Go's zero time (0001-01-01T00:00:00Z) is null too.
    if total == -62_135_596_800 * 1_000_000_000 {
        return Ok(Value::Null);
    }
    let invalid = || ProtobufError::InvalidValue {
        message: msg.name,
        reason: format!("{seconds}s {nanos}ns is not a time between years 0 and 9999"),
    };
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(total).map_err(|_| invalid())?;
    if !(0..=9999).contains(&t.year()) {
        return Err(invalid());
    }
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if micro {
        s.push_str(&format!(".{:06}", t.microsecond()));
    }
    s.push('Z');
    Ok(Value::String(s))
}

fn int_or_string(msg: &'static Message, buf: &[u8]) -> Result<Value> {
    let (mut ty, mut int_val, mut str_val) = (0i64, 0i32, String::new());
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, VARINT) => ty = r.varint()? as i64,
            (2, VARINT) => int_val = r.varint()? as i32,
            (3, LEN) => str_val = r.string()?,
            (_, wt) => r.skip(wt)?,
        }
    }
    match ty {
        0 => Ok(Value::from(int_val)),
        1 => Ok(Value::String(str_val)),
        _ => Err(ProtobufError::InvalidValue {
            message: msg.name,
            reason: format!("type {ty} is neither 0 (int) nor 1 (string)"),
        }),
    }
}

fn raw_json(msg: &'static Message, buf: &[u8], depth: usize) -> Result<Value> {
    let mut raw = &[][..];
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => raw = r.bytes()?,
            (_, wt) => r.skip(wt)?,
        }
    }
    // Go prints a nil RawExtension, FieldsV1 or JSON as null.
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    // An embedded object a Go client encoded as protobuf carries its own envelope.
    if raw.starts_with(MAGIC) {
        return decode_envelope(raw, depth);
    }
    serde_json::from_slice(raw).map_err(|e| ProtobufError::InvalidValue {
        message: msg.name,
        reason: format!("its raw bytes are not JSON ({e})"),
    })
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "1.5ms", "0s".
fn go_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let mut s = String::new();
    if u < 1_000_000_000 {
        let (unit, prec) = match u {
            0 => return "0s".into(),
            1..=999 => ("ns", 0),
            1_000..=999_999 => ("µs", 3),
            _ => ("ms", 6),
        };
        let (int, frac) = fraction(u, prec);
        s.push_str(&format!("{int}{frac}{unit}"));
    } else {
        let (secs, frac) = fraction(u, 9);
        let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            s.push_str(&format!("{h}h{m}m"));
        } else if m > 0 {
            s.push_str(&format!("{m}m"));
        }
        s.push_str(&format!("{sec}{frac}s"));
    }
    if neg {
        s.insert(0, '-');
    }
    s
}

/// `v / 10^prec` as its integer part and ".digits" without trailing zeros (empty when none).
fn fraction(v: u64, prec: u32) -> (u64, String) {
    let scale = 10u64.pow(prec);
    let frac = v % scale;
    if frac == 0 {
        return (v / scale, String::new());
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    (v / scale, format!(".{}", digits.trim_end_matches('0')))
}

#[cfg(test)]
mod tests;
