//! docs/PROTOCOL.md is the protocol's specification: a client in another
//! language is written from it alone. These tests keep it from drifting
//! away from the code.
//!
//! - Every `frame` block (a hex dump) is decoded with the real codec; the
//!   message must be the one written in the `message` block above it, and
//!   it must re-encode to the same bytes. The paragraph under a frame names
//!   its bytes in order (`` `00 01` `` spans, `` `"text"` `` spans for the
//!   UTF-8 of a string); together they must be exactly the frame.
//! - Every type that goes on the wire (each `Serialize` struct and enum of
//!   `src/protocol.rs` and `src/task.rs`) has a `### struct` or `### enum`
//!   section in the document's type reference, listing every field in
//!   order with its type, and every variant with its tag and fields. A new
//!   type, field or variant that the document does not name fails here,
//!   and so does one the document names that the code no longer has. A
//!   tuple struct's fields are named `0`, `1`, … as Rust names them.
//!
//! The source is read as text (it is rustfmt'ed), and the field and variant
//! names read from it are checked against what serde itself reports, so a
//! change of formatting cannot make the check pass by accident.

use bytes::BytesMut;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use tokio_util::codec::{Decoder, Encoder};

use tcp_task::codec::FrameCodec;
use tcp_task::protocol::{
    CatalogEntryInfo, ClientMessage, Ending, EngineStatus, ErrorKind, Hello, Limits, NodeStatus,
    Offsets, Outcome, OutputStream, PoolStatus, ProgressEvent, RegistryAuth, ServerMessage,
    ServerStatus, Task, TaskError, TaskId, TaskInfo, TaskSpec, TaskState, Usage, Welcome, MAGIC,
    PROTOCOL_VERSION,
};

const DOC: &str = include_str!("../docs/PROTOCOL.md");
const WIRE_SOURCES: [(&str, &str); 2] = [
    ("src/protocol.rs", include_str!("../src/protocol.rs")),
    ("src/task.rs", include_str!("../src/task.rs")),
];

// ---------------------------------------------------------------------------
// The document's blocks
// ---------------------------------------------------------------------------

/// A fenced block of the document: its info string, its lines, and the
/// 1-based line numbers of its opening and closing fences.
struct Block {
    info: String,
    text: String,
    open: usize,
    close: usize,
}

fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(info) = lines[i].strip_prefix("```") {
            let open = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim_end() != "```" {
                body.push(lines[i]);
                i += 1;
            }
            assert!(i < lines.len(), "unclosed block at line {}", open + 1);
            found.push(Block {
                info: info.trim().to_owned(),
                text: body.join("\n"),
                open: open + 1,
                close: i + 1,
            });
        }
        i += 1;
    }
    found
}

/// The paragraph right after line `after` (1-based), skipping blank lines:
/// the explanation of a frame.
fn paragraph_after(doc: &str, after: usize) -> String {
    doc.lines()
        .skip(after)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A hex dump: `OFFSET  HEX…  ASCII` lines as the document prints them.
/// The offsets must count up and the ASCII column must match the bytes.
fn parse_dump(text: &str, where_: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let (offset, rest) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("{where_}: not a dump line: {line:?}"));
        let offset = usize::from_str_radix(offset, 16)
            .unwrap_or_else(|_| panic!("{where_}: bad offset in {line:?}"));
        assert_eq!(offset, bytes.len(), "{where_}: offset of {line:?}");
        // Hex pairs separated by one space; two spaces start the ASCII column.
        let (hex, ascii) = match rest.find("  ") {
            Some(gap) => (&rest[..gap], rest[gap..].trim_start()),
            None => (rest, ""),
        };
        let row: Vec<u8> = hex
            .split(' ')
            .map(|pair| {
                assert_eq!(pair.len(), 2, "{where_}: {pair:?} in {line:?}");
                u8::from_str_radix(pair, 16)
                    .unwrap_or_else(|_| panic!("{where_}: {pair:?} is not hex"))
            })
            .collect();
        assert!(row.len() <= 16, "{where_}: more than 16 bytes in {line:?}");
        let shown: String = row
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        assert_eq!(ascii, shown, "{where_}: ASCII column of {line:?}");
        bytes.extend(row);
    }
    bytes
}

/// The code spans of a paragraph, as Markdown reads them (a span opened by
/// N backticks ends at the next run of exactly N).
fn code_spans(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let start = i + run;
        let mut j = start;
        let mut end = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|&&c| c == '`').count();
                if n == run {
                    end = Some(j);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        let Some(end) = end else { break };
        let mut span: String = chars[start..end].iter().collect();
        if span.len() >= 2 && span.starts_with(' ') && span.ends_with(' ') {
            span = span[1..span.len() - 1].to_owned();
        }
        spans.push(span);
        i = end + run;
    }
    spans
}

/// The bytes a code span of an explanation stands for: `00 fb 9c` for
/// those bytes, `"text"` for the UTF-8 of the text (with `\n`, `\"`, `\\`,
/// `\0` escapes). Other spans (`u64`, `Some(3)`) stand for nothing.
fn span_bytes(span: &str) -> Option<Vec<u8>> {
    let is_hex_pairs = !span.is_empty()
        && span.split(' ').all(|p| {
            p.len() == 2
                && p.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
    if is_hex_pairs {
        return Some(
            span.split(' ')
                .map(|p| u8::from_str_radix(p, 16).unwrap())
                .collect(),
        );
    }
    let inner = span.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(c @ ('"' | '\\')) => out.push(c),
            other => panic!("unknown escape \\{other:?} in {span:?}"),
        }
    }
    Some(out.into_bytes())
}

/// `Debug` text with the layout taken out: whitespace outside string
/// literals, and a comma right before a closing bracket, so that a message
/// may be written on one line or spread over several.
fn squeeze(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            c if c.is_whitespace() => {}
            '}' | ']' | ')' => {
                if out.ends_with(',') {
                    out.pop();
                }
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// How the document writes a hello: its `Debug` hides the token, and the
/// magic reads better as a byte string.
fn show_hello(hello: &Hello) -> String {
    format!(
        "Hello {{ magic: {:?}, version: {}, client: {:?}, token: {:?} }}",
        bytes::Bytes::copy_from_slice(&hello.magic),
        hello.version,
        hello.client,
        hello.token
    )
}

/// Decodes one whole frame (length prefix included) with the real codec,
/// checks nothing is left, and re-encodes it. Returns the message and the
/// re-encoded frame.
fn decode_frame<M>(frame: &[u8], where_: &str) -> (M, Vec<u8>)
where
    M: DeserializeOwned + Serialize,
{
    let mut buf = BytesMut::from(frame);
    let message = FrameCodec::<M>::default()
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{where_}: the frame does not decode: {e}"))
        .unwrap_or_else(|| panic!("{where_}: the frame is incomplete"));
    assert!(
        buf.is_empty(),
        "{where_}: {} bytes after the frame",
        buf.len()
    );
    let mut again = BytesMut::new();
    FrameCodec::<()>::default()
        .encode(&message, &mut again)
        .unwrap_or_else(|e| panic!("{where_}: does not re-encode: {e}"));
    (message, again.to_vec())
}

/// One `message` + `frame` pair of the document, checked.
enum Example {
    Hello(Hello),
    Client(ClientMessage),
    Server(ServerMessage),
}

fn check_example(doc: &str, message: &Block, frame: &Block) -> Example {
    let where_ = format!("docs/PROTOCOL.md:{}", frame.open);
    let bytes = parse_dump(&frame.text, &where_);
    assert!(bytes.len() >= 4, "{where_}: no length prefix");
    let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(
        declared,
        bytes.len() - 4,
        "{where_}: the length prefix says {declared}, the body has {} bytes",
        bytes.len() - 4
    );

    let stated = message.text.trim();
    let (example, shown, again) = if stated.starts_with("Hello ") {
        let (hello, again) = decode_frame::<Hello>(&bytes, &where_);
        let shown = show_hello(&hello);
        (Example::Hello(hello), shown, again)
    } else if stated.starts_with("ClientMessage::") {
        let (m, again) = decode_frame::<ClientMessage>(&bytes, &where_);
        let shown = format!("ClientMessage::{m:?}");
        (Example::Client(m), shown, again)
    } else if stated.starts_with("ServerMessage::") {
        let (m, again) = decode_frame::<ServerMessage>(&bytes, &where_);
        let shown = format!("ServerMessage::{m:?}");
        (Example::Server(m), shown, again)
    } else {
        panic!(
            "docs/PROTOCOL.md:{}: a message block must start with `Hello`, \
             `ClientMessage::` or `ServerMessage::`: {stated:?}",
            message.open
        );
    };
    assert!(
        !shown.contains("<redacted>"),
        "{where_}: examples must not hold secrets that Debug hides"
    );
    assert_eq!(
        squeeze(&shown),
        squeeze(stated),
        "{where_}: the frame decodes to\n{shown}\nbut the document says (line {})\n{stated}",
        message.open
    );
    assert_eq!(
        again,
        bytes,
        "{where_}: the message re-encodes to other bytes:\n{}",
        dump(&again)
    );

    // The explanation names every byte, in order.
    let explanation = paragraph_after(doc, frame.close);
    let named: Vec<u8> = code_spans(&explanation)
        .iter()
        .filter_map(|s| span_bytes(s))
        .flatten()
        .collect();
    assert!(
        !named.is_empty(),
        "{where_}: no paragraph explaining the frame's bytes follows it"
    );
    assert_eq!(
        named,
        bytes,
        "{where_}: the explanation names these bytes:\n{}\nbut the frame is:\n{}",
        dump(&named),
        dump(&bytes)
    );
    example
}

/// Bytes as the document prints them, for failure messages.
fn dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = row
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        out += &format!("{:04x}  {:<48} {ascii}\n", i * 16, hex.join(" "));
    }
    out
}

fn examples(doc: &str) -> Vec<Example> {
    let blocks = blocks(doc);
    let mut checked = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block.info.as_str() {
            "message" => {
                let frame = blocks.get(i + 1).filter(|b| b.info == "frame");
                let frame = frame.unwrap_or_else(|| {
                    panic!(
                        "docs/PROTOCOL.md:{}: a message block must be followed by its frame block",
                        block.open
                    )
                });
                checked.push(check_example(doc, block, frame));
            }
            "frame" => {
                let message = i.checked_sub(1).map(|j| &blocks[j]);
                assert!(
                    message.is_some_and(|b| b.info == "message"),
                    "docs/PROTOCOL.md:{}: a frame block must follow the message block it shows",
                    block.open
                );
            }
            _ => {}
        }
    }
    checked
}

#[test]
fn every_frame_in_the_document_is_the_message_it_says_byte_for_byte() {
    let examples = examples(DOC);
    assert!(
        examples.len() >= 30,
        "only {} examples found",
        examples.len()
    );

    // Every message type and every variant appears at least once.
    let mut client = BTreeSet::new();
    let mut server = BTreeSet::new();
    for example in &examples {
        match example {
            Example::Client(m) => {
                client.insert(variant_name(m));
            }
            Example::Server(m) => {
                server.insert(variant_name(m));
            }
            Example::Hello(_) => {}
        }
    }
    let all_client = variants_of::<ClientMessage>();
    let all_server = variants_of::<ServerMessage>();
    let missing: Vec<_> = all_client
        .iter()
        .filter(|v| !client.contains(*v))
        .chain(all_server.iter().filter(|v| !server.contains(*v)))
        .collect();
    assert!(
        missing.is_empty(),
        "no example frame of {missing:?} in docs/PROTOCOL.md"
    );
}

/// The handshake examples are what this build really sends.
#[test]
fn the_handshake_examples_are_this_builds() {
    let examples = examples(DOC);
    let hello = examples.iter().find_map(|e| match e {
        Example::Hello(h) if h.version == PROTOCOL_VERSION => Some(h),
        _ => None,
    });
    let hello = hello.expect("an example hello of this version");
    assert_eq!(hello.magic, MAGIC);
    let welcome = examples.iter().find_map(|e| match e {
        Example::Server(ServerMessage::Welcome(w)) => Some(w),
        _ => None,
    });
    let welcome = welcome.expect("an example welcome");
    let real = Welcome {
        version: PROTOCOL_VERSION,
        server: tcp_task::server::server_name(),
        limits: tcp_task::ServerConfig::default().limits(),
    };
    assert_eq!(
        welcome, &real,
        "the document's welcome is not what a default server sends"
    );
}

fn variant_name<T: Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Types: the source, serde's view of it, and the document's reference
// ---------------------------------------------------------------------------

/// A type as the source, serde or the document describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Field names and types, in order.
    Struct(Vec<(String, String)>),
    /// Variants in tag order, each with its fields (an unnamed field has
    /// an empty name).
    Enum(Vec<(String, Vec<(String, String)>)>),
}

/// Splits at commas that are not inside brackets of any kind.
fn split_top(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A type as the document writes it: no spaces, `Box<T>` as `T`, aliases
/// (`RequestId`) as what they stand for.
fn normalize_type(ty: &str, aliases: &BTreeMap<String, String>) -> String {
    let mut ty: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    while let Some(start) = ty.find("Box<") {
        // Drop `Box<` and its matching `>`.
        let mut depth = 0;
        let mut end = None;
        for (i, c) in ty[start + 3..].char_indices() {
            match c {
                '<' => depth += 1,
                '>' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(start + 3 + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end.expect("a closed Box<…>");
        ty = format!("{}{}{}", &ty[..start], &ty[start + 4..end], &ty[end + 1..]);
    }
    let mut out = String::new();
    let mut word = String::new();
    for c in ty.chars().chain(std::iter::once(' ')) {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            let resolved = aliases.get(&word).cloned().unwrap_or(word.clone());
            out.push_str(&resolved);
            word.clear();
        }
        if c != ' ' {
            out.push(c);
        }
    }
    out
}

fn parse_fields(body: &str, aliases: &BTreeMap<String, String>) -> Vec<(String, String)> {
    split_top(body)
        .into_iter()
        .map(|field| {
            let field = field
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            let (name, ty) = field
                .split_once(':')
                .unwrap_or_else(|| panic!("cannot read the field {field:?}"));
            (name.trim().to_owned(), normalize_type(ty, aliases))
        })
        .collect()
}

/// The one serde attribute a wire type may carry: on a struct with one
/// field it changes nothing in bincode, which encodes any struct as its
/// fields (a newtype struct as its one field) with no names.
const TRANSPARENT: &str = "#[serde(transparent)]";

/// The `Serialize` structs and enums of a source file, read as text.
fn wire_types_in(
    file: &str,
    source: &str,
    aliases: &BTreeMap<String, String>,
) -> BTreeMap<String, Shape> {
    let mut types = BTreeMap::new();
    let lines: Vec<&str> = source.lines().collect();
    let mut serialized = false;
    let mut transparent = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.starts_with("#[cfg(test)]") {
            break; // the tests module: nothing on the wire after it
        }
        if line.starts_with("#[derive(") {
            serialized = line.contains("Serialize");
            transparent = false;
            continue;
        }
        if line.starts_with("#[") {
            if serialized && line == TRANSPARENT {
                transparent = true;
                continue;
            }
            assert!(
                !(serialized && line.contains("serde")),
                "{file}:{i}: a serde attribute on a wire type ({line}); it may change the \
                 encoding: describe it in docs/PROTOCOL.md and teach tests/protocol_doc.rs"
            );
            continue;
        }
        let item = line
            .strip_prefix("pub struct ")
            .map(|rest| ("struct", rest))
            .or_else(|| line.strip_prefix("pub enum ").map(|rest| ("enum", rest)));
        let Some((kind, rest)) = item else {
            if !line.starts_with("//") && !line.is_empty() {
                serialized = false;
            }
            continue;
        };
        if !serialized {
            continue;
        }
        serialized = false;
        // A tuple struct, `pub struct Name(Type, …);`: its fields are
        // named `0`, `1`, … as in Rust.
        if let Some(open) = rest.find('(').filter(|_| kind == "struct") {
            let name = rest[..open].trim();
            let inner = rest[open + 1..]
                .trim_end()
                .strip_suffix(");")
                .unwrap_or_else(|| panic!("{file}:{i}: cannot read the tuple struct `{line}`"));
            let fields: Vec<(String, String)> = split_top(inner)
                .into_iter()
                .enumerate()
                .map(|(n, ty)| {
                    let ty = ty
                        .trim_start_matches("pub(crate) ")
                        .trim_start_matches("pub ");
                    (n.to_string(), normalize_type(ty, aliases))
                })
                .collect();
            assert!(
                !transparent || fields.len() == 1,
                "{file}:{i}: {TRANSPARENT} on `{name}`, which has not one field"
            );
            types.insert(name.to_owned(), Shape::Struct(fields));
            continue;
        }
        assert!(
            !transparent || kind == "struct",
            "{file}:{i}: {TRANSPARENT} on an enum"
        );
        let name = rest.trim_end_matches('{').trim();
        assert!(
            name.chars().all(|c| c.is_alphanumeric() || c == '_'),
            "{file}:{i}: cannot read the item `{line}` (generics, tuple or unit structs are not \
             understood here; teach tests/protocol_doc.rs)"
        );
        // The body, without comments and attributes, up to the closing brace.
        let mut body = String::new();
        let mut depth = 1;
        while depth > 0 {
            // A line without its comment (types hold no `//`).
            let raw = lines[i].split("//").next().unwrap_or_default().trim();
            i += 1;
            if raw.is_empty() {
                continue;
            }
            if raw.starts_with("#[") {
                // How a field is read, not what is on the wire.
                let reading_only = raw == r#"#[serde(deserialize_with = "bytes_copied")]"#;
                assert!(
                    !raw.contains("serde") || reading_only,
                    "{file}:{i}: a serde attribute inside a wire type ({raw}); describe it \
                     in docs/PROTOCOL.md and teach tests/protocol_doc.rs"
                );
                continue;
            }
            for c in raw.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                body.push(c);
            }
            body.push(' ');
        }
        let shape = if kind == "struct" {
            Shape::Struct(parse_fields(&body, aliases))
        } else {
            let variants = split_top(&body)
                .into_iter()
                .map(|variant| {
                    if let Some((name, fields)) = variant.split_once('{') {
                        let fields = fields.trim_end().trim_end_matches('}');
                        (name.trim().to_owned(), parse_fields(fields, aliases))
                    } else if let Some((name, fields)) = variant.split_once('(') {
                        let fields = fields.trim_end().trim_end_matches(')');
                        let unnamed = split_top(fields)
                            .into_iter()
                            .map(|ty| (String::new(), normalize_type(&ty, aliases)))
                            .collect();
                        (name.trim().to_owned(), unnamed)
                    } else {
                        (variant.trim().to_owned(), Vec::new())
                    }
                })
                .collect();
            Shape::Enum(variants)
        };
        types.insert(name.to_owned(), shape);
    }
    types
}

/// `pub type Name = Type;` in the wire sources.
fn aliases() -> BTreeMap<String, String> {
    let mut aliases = BTreeMap::new();
    for (_, source) in WIRE_SOURCES {
        for line in source.lines() {
            if let Some(rest) = line.trim().strip_prefix("pub type ") {
                let (name, ty) = rest.split_once('=').expect("pub type Name = Type;");
                aliases.insert(
                    name.trim().to_owned(),
                    ty.trim().trim_end_matches(';').trim().to_owned(),
                );
            }
        }
    }
    aliases
}

fn source_types() -> BTreeMap<String, Shape> {
    let aliases = aliases();
    let mut all = BTreeMap::new();
    for (file, source) in WIRE_SOURCES {
        for (name, shape) in wire_types_in(file, source, &aliases) {
            assert!(all.insert(name.clone(), shape).is_none(), "{name} twice");
        }
    }
    all
}

/// The document's type reference: `### struct `Name`` and `### enum `Name``
/// sections, each with its table.
fn document_types() -> BTreeMap<String, Shape> {
    let mut types = BTreeMap::new();
    let lines: Vec<&str> = DOC.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        let Some(heading) = line.strip_prefix("### ") else {
            continue;
        };
        let (kind, name) = match heading.split_once(' ') {
            Some((kind @ ("struct" | "enum"), name)) => (kind, name.trim().trim_matches('`')),
            _ => continue,
        };
        let where_ = format!("docs/PROTOCOL.md:{}", at + 1);
        // The first table after the heading.
        let table: Vec<Vec<String>> = lines[at + 1..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect();
        assert!(table.len() >= 3, "{where_}: no table under `{heading}`");
        let header = &table[0];
        let column = |title: &str| {
            header
                .iter()
                .position(|h| h == title)
                .unwrap_or_else(|| panic!("{where_}: no `{title}` column"))
        };
        let rows = &table[2..];
        let shape = if kind == "struct" {
            let (number, field, ty) = (column("#"), column("field"), column("type"));
            let mut fields = Vec::new();
            for (n, row) in rows.iter().enumerate() {
                assert_eq!(row[number], (n + 1).to_string(), "{where_}: numbering");
                fields.push((
                    row[field].trim_matches('`').to_owned(),
                    normalize_type(row[ty].trim_matches('`'), &BTreeMap::new()),
                ));
            }
            Shape::Struct(fields)
        } else {
            let (tag, variant, fields) = (column("tag"), column("variant"), column("fields"));
            let mut variants = Vec::new();
            for (n, row) in rows.iter().enumerate() {
                assert_eq!(row[tag], n.to_string(), "{where_}: tags");
                let listed = code_spans(&row[fields])
                    .into_iter()
                    .map(|span| match span.split_once(':') {
                        Some((name, ty)) => {
                            (name.trim().to_owned(), normalize_type(ty, &BTreeMap::new()))
                        }
                        None => (String::new(), normalize_type(&span, &BTreeMap::new())),
                    })
                    .collect();
                variants.push((row[variant].trim_matches('`').to_owned(), listed));
            }
            Shape::Enum(variants)
        };
        assert!(
            types.insert(name.to_owned(), shape).is_none(),
            "{where_}: `{name}` twice"
        );
    }
    types
}

#[test]
fn the_type_reference_names_every_type_field_and_variant_of_the_code() {
    let source = source_types();
    let document = document_types();
    let mut wrong = Vec::new();
    for (name, shape) in &source {
        match document.get(name) {
            None => wrong.push(format!(
                "`{name}` goes on the wire but docs/PROTOCOL.md has no `### struct/enum `{name}`` \
                 section: add one with its {shape:?}"
            )),
            Some(documented) if documented != shape => wrong.push(format!(
                "`{name}` in the code:\n  {shape:?}\nin docs/PROTOCOL.md:\n  {documented:?}"
            )),
            Some(_) => {}
        }
    }
    for name in document.keys() {
        if !source.contains_key(name) {
            wrong.push(format!(
                "docs/PROTOCOL.md documents `{name}`, which is not a wire type of the code"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// Every type a field names is either in the type reference or one of the
/// encodings the document's table explains.
#[test]
fn every_type_named_on_the_wire_is_explained() {
    let types = source_types();
    let encoding = DOC
        .split("## Encoding of values")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("an `Encoding of values` section");
    let explained = |row: &str| {
        encoding.contains(&format!("| `{row}`")) || encoding.contains(&format!(", `{row}`"))
    };
    let mut unexplained = BTreeSet::new();
    for shape in types.values() {
        let fields: Vec<&(String, String)> = match shape {
            Shape::Struct(fields) => fields.iter().collect(),
            Shape::Enum(variants) => variants.iter().flat_map(|(_, f)| f).collect(),
        };
        for (_, ty) in fields {
            if ty.contains('(') && !explained("(A, B)") {
                unexplained.insert("(A, B)".to_owned());
            }
            if ty.contains('[') && !explained("[u8; 4]") {
                unexplained.insert(ty.clone());
            }
            for word in ty.split(|c: char| !c.is_alphanumeric() && c != '_') {
                if word.is_empty() || word == "4" || types.contains_key(word) {
                    continue;
                }
                let row = match word {
                    "Option" | "Vec" => format!("{word}<T>"),
                    other => other.to_owned(),
                };
                if !explained(&row) {
                    unexplained.insert(row);
                }
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "the encoding of {unexplained:?} is not in the `Encoding of values` table of docs/PROTOCOL.md"
    );
}

/// The source reading above is only as good as its parser: serde's own
/// view of each type (the names it hands to a deserializer) must agree.
#[test]
fn the_source_reading_agrees_with_serde() {
    let source = source_types();
    let serde_view: BTreeMap<&str, Shape> = [
        ("Hello", probe::<Hello>()),
        ("Welcome", probe::<Welcome>()),
        ("Limits", probe::<Limits>()),
        ("ClientMessage", probe::<ClientMessage>()),
        ("ServerMessage", probe::<ServerMessage>()),
        ("TaskSpec", probe::<TaskSpec>()),
        ("Task", probe::<Task>()),
        ("RegistryAuth", probe::<RegistryAuth>()),
        ("ProgressEvent", probe::<ProgressEvent>()),
        ("OutputStream", probe::<OutputStream>()),
        ("Outcome", probe::<Outcome>()),
        ("Ending", probe::<Ending>()),
        ("TaskError", probe::<TaskError>()),
        ("ErrorKind", probe::<ErrorKind>()),
        ("ServerStatus", probe::<ServerStatus>()),
        ("EngineStatus", probe::<EngineStatus>()),
        ("PoolStatus", probe::<PoolStatus>()),
        ("NodeStatus", probe::<NodeStatus>()),
        ("CatalogEntryInfo", probe::<CatalogEntryInfo>()),
        ("TaskId", probe::<TaskId>()),
        ("Offsets", probe::<Offsets>()),
        ("TaskState", probe::<TaskState>()),
        ("TaskInfo", probe::<TaskInfo>()),
        ("Usage", probe::<Usage>()),
    ]
    .into_iter()
    .collect();
    let names = |shape: &Shape| -> Vec<(String, Vec<String>)> {
        match shape {
            Shape::Struct(fields) => vec![(
                String::new(),
                fields.iter().map(|(n, _)| n.clone()).collect(),
            )],
            Shape::Enum(variants) => variants
                .iter()
                .map(|(v, fields)| (v.clone(), fields.iter().map(|(n, _)| n.clone()).collect()))
                .collect(),
        }
    };
    let source_names: BTreeSet<&str> = source.keys().map(String::as_str).collect();
    let probed: BTreeSet<&str> = serde_view.keys().copied().collect();
    assert_eq!(
        source_names, probed,
        "the wire types read from the source differ from the list probed here; add the new \
         type to this test's list"
    );
    for (name, shape) in &serde_view {
        assert_eq!(
            names(&source[*name]),
            names(shape),
            "`{name}`: the source was misread"
        );
    }
}

fn variants_of<T: DeserializeOwned>() -> Vec<String> {
    match probe::<T>() {
        Shape::Enum(variants) => variants.into_iter().map(|(v, _)| v).collect(),
        Shape::Struct(_) => panic!("not an enum"),
    }
}

// A deserializer that deserializes nothing: it only records the names that
// serde's derived code hands it (a struct's fields, an enum's variants and,
// one variant at a time, their fields), then stops with an error carrying
// them. Field types are not seen; those come from the source.

#[derive(Debug)]
enum Seen {
    Fields(Vec<String>),
    /// A struct seen as one unnamed value: a newtype struct, or a
    /// transparent one (whose field, a string, is asked for directly).
    Newtype,
    Variants(Vec<String>),
    Unit,
    Tuple(usize),
    Other(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Other(message) => f.write_str(message),
            seen => write!(f, "{seen:?}"),
        }
    }
}

impl std::error::Error for Seen {}

impl de::Error for Seen {
    fn custom<T: fmt::Display>(msg: T) -> Seen {
        Seen::Other(msg.to_string())
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

struct Probe {
    /// For an enum: which variant to open; `None` to list the variants.
    variant: Option<u32>,
}

impl<'de> Deserializer<'de> for Probe {
    type Error = Seen;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Seen> {
        Err(Seen::Other("deserialize_any".into()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Seen> {
        Err(Seen::Fields(strings(fields)))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Seen> {
        Err(Seen::Newtype)
    }

    fn deserialize_string<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Seen> {
        Err(Seen::Newtype)
    }

    fn deserialize_str<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Seen> {
        Err(Seen::Newtype)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Seen> {
        match self.variant {
            None => Err(Seen::Variants(strings(variants))),
            Some(index) => visitor.visit_enum(ProbeVariant(index)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

struct ProbeVariant(u32);

impl<'de> de::EnumAccess<'de> for ProbeVariant {
    type Error = Seen;
    type Variant = ProbeVariant;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ProbeVariant), Seen> {
        let index = de::value::U32Deserializer::<Seen>::new(self.0);
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for ProbeVariant {
    type Error = Seen;

    fn unit_variant(self) -> Result<(), Seen> {
        Err(Seen::Unit)
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, _: S) -> Result<S::Value, Seen> {
        Err(Seen::Tuple(1))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, _: V) -> Result<V::Value, Seen> {
        Err(Seen::Tuple(len))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Seen> {
        Err(Seen::Fields(strings(fields)))
    }
}

/// What serde says `T` is: its field names, or its variants with theirs.
fn probe<T: DeserializeOwned>() -> Shape {
    let unnamed = |n: usize| vec![(String::new(), String::new()); n];
    let named = |fields: Vec<String>| fields.into_iter().map(|f| (f, String::new())).collect();
    match T::deserialize(Probe { variant: None }) {
        Err(Seen::Fields(fields)) => Shape::Struct(named(fields)),
        Err(Seen::Newtype) => Shape::Struct(named(vec!["0".to_owned()])),
        Err(Seen::Variants(variants)) => Shape::Enum(
            variants
                .into_iter()
                .enumerate()
                .map(|(i, variant)| {
                    let fields = match T::deserialize(Probe {
                        variant: Some(i as u32),
                    }) {
                        Err(Seen::Fields(fields)) => named(fields),
                        Err(Seen::Unit) => Vec::new(),
                        Err(Seen::Tuple(n)) => unnamed(n),
                        Err(other) => panic!("variant {variant}: {other}"),
                        Ok(_) => panic!("variant {variant} deserialized from nothing"),
                    };
                    (variant, fields)
                })
                .collect(),
        ),
        Err(other) => panic!(
            "{} is neither a struct nor an enum: {other}",
            std::any::type_name::<T>()
        ),
        Ok(_) => panic!("deserialized from nothing"),
    }
}
