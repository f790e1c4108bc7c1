//! JSON field paths for masking: `$.a.b`, `$.list[*].ssn`, `$.list[0]`,
//! `$..password` (any depth), `$.*`.
//!
//! A small hand-written subset of JSONPath (RFC 9535) on purpose: masking
//! needs to *replace* the selected values as the document streams past,
//! which the JSONPath crates (they return read-only node lists of a parsed
//! document) do not offer, and only these selectors are needed.
//!
//! The document is never held as a tree: `mask_stream` re-writes it token
//! by token (serde_json's parser driving a visitor), so masking a 9 MiB
//! body takes the body and its output, not the ten times more a
//! `serde_json::Value` of it would.
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::io::Write;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Child(String),
    Wildcard,
    Index(usize),
    /// `..name`: the field at any depth.
    Descendant(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    pub text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(s: &str) -> Result<JsonPath, String> {
        let err = |why: &str| format!("JSON path {s:?}: {why}");
        let mut rest = s
            .strip_prefix('$')
            .ok_or_else(|| err("must start with $"))?;
        let mut steps = Vec::new();
        let name_end = |r: &str| r.find(['.', '[']).unwrap_or(r.len());
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                let n = name_end(r);
                if n == 0 {
                    return Err(err("`..` must be followed by a field name"));
                }
                steps.push(Step::Descendant(r[..n].to_string()));
                rest = &r[n..];
            } else if let Some(r) = rest.strip_prefix('.') {
                let n = name_end(r);
                match &r[..n] {
                    "" => return Err(err("empty field name")),
                    "*" => steps.push(Step::Wildcard),
                    name => steps.push(Step::Child(name.to_string())),
                }
                rest = &r[n..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let close = r.find(']').ok_or_else(|| err("missing ]"))?;
                let inner = &r[..close];
                steps.push(match inner {
                    "*" => Step::Wildcard,
                    q if q.len() >= 2
                        && (q.starts_with('\'') && q.ends_with('\'')
                            || q.starts_with('"') && q.ends_with('"')) =>
                    {
                        Step::Child(q[1..q.len() - 1].to_string())
                    }
                    n => Step::Index(
                        n.parse()
                            .map_err(|_| err("[...] takes *, an index or a quoted name"))?,
                    ),
                });
                rest = &r[close + 1..];
            } else {
                return Err(err("expected . or ["));
            }
        }
        if steps.is_empty() {
            return Err(err("selects the whole document"));
        }
        Ok(JsonPath {
            text: s.to_string(),
            steps,
        })
    }

    /// Replaces every selected value of a parsed (small) document with
    /// `[REDACTED]`; returns how many.
    pub fn mask(&self, v: &mut Value) -> u64 {
        apply(&self.steps, v)
    }

    /// Whether this path selects the value at `at`.
    fn selects(&self, at: &[Seg]) -> bool {
        selects(&self.steps, at)
    }
}

/// One step of where the parser is: a field name or an array index.
enum Seg {
    Key(String),
    Index(usize),
}

fn selects(steps: &[Step], at: &[Seg]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return at.is_empty();
    };
    if let Step::Descendant(name) = step {
        return (0..at.len())
            .any(|k| matches!(&at[k], Seg::Key(n) if n == name) && selects(rest, &at[k + 1..]));
    }
    let Some((seg, more)) = at.split_first() else {
        return false;
    };
    let here = match (step, seg) {
        (Step::Child(name), Seg::Key(k)) => name == k,
        (Step::Index(i), Seg::Index(j)) => i == j,
        (Step::Wildcard, _) => true,
        _ => false,
    };
    here && selects(rest, more)
}

/// Writes `input`, a JSON document, to `out` with every value a path
/// selects replaced by `"[REDACTED]"` (compact, numbers as serde_json
/// reads them); returns how many were replaced. An error means `input`
/// is not one JSON document, or `out` refused a write.
#[cfg(test)]
pub fn mask_stream(
    paths: &[JsonPath],
    input: &[u8],
    out: &mut impl Write,
) -> serde_json::Result<u64> {
    mask_stream_from(paths, input, out)
}

/// `mask_stream` reading from `input` as it goes.
pub fn mask_stream_from(
    paths: &[JsonPath],
    input: impl std::io::Read,
    out: &mut impl Write,
) -> serde_json::Result<u64> {
    let mut ctx = Ctx {
        paths,
        at: Vec::new(),
        out,
        masked: 0,
    };
    let mut de = serde_json::Deserializer::from_reader(input);
    Node(&mut ctx).deserialize(&mut de)?;
    de.end()?;
    Ok(ctx.masked)
}

struct Ctx<'p, W> {
    paths: &'p [JsonPath],
    at: Vec<Seg>,
    out: W,
    masked: u64,
}

impl<W: Write> Ctx<'_, W> {
    fn write<E: de::Error>(&mut self, b: &[u8]) -> Result<(), E> {
        self.out.write_all(b).map_err(E::custom)
    }

    fn json<E: de::Error>(&mut self, v: &impl serde::Serialize) -> Result<(), E> {
        serde_json::to_writer(&mut self.out, v).map_err(E::custom)
    }

    fn selected(&self) -> bool {
        self.paths.iter().any(|p| p.selects(&self.at))
    }

    /// The value at the current place: skipped and redacted, or copied.
    fn value<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        if self.selected() {
            <IgnoredAny as de::Deserialize>::deserialize(d)?;
            self.masked += 1;
            self.write(b"\"[REDACTED]\"")
        } else {
            Node(self).deserialize(d)
        }
    }
}

/// Copies one value, visiting its children.
struct Node<'c, 'p, W>(&'c mut Ctx<'p, W>);

impl<'de, W: Write> DeserializeSeed<'de> for Node<'_, '_, W> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// An array element: a comma first unless it is the first.
struct Element<'c, 'p, W> {
    ctx: &'c mut Ctx<'p, W>,
    first: bool,
}

impl<'de, W: Write> DeserializeSeed<'de> for Element<'_, '_, W> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if !self.first {
            self.ctx.write(b",")?;
        }
        self.ctx.value(d)
    }
}

impl<'de, W: Write> Visitor<'de> for Node<'_, '_, W> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.write(if v { b"true" } else { b"false" })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.json(&v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.json(&v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.json(&v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.json(&v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.write(b"null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.0;
        ctx.write(b"[")?;
        let mut i = 0;
        loop {
            ctx.at.push(Seg::Index(i));
            let more = seq.next_element_seed(Element {
                ctx: &mut *ctx,
                first: i == 0,
            })?;
            ctx.at.pop();
            if more.is_none() {
                break;
            }
            i += 1;
        }
        ctx.write(b"]")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        ctx.write(b"{")?;
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                ctx.write(b",")?;
            }
            first = false;
            ctx.json(&key)?;
            ctx.write(b":")?;
            ctx.at.push(Seg::Key(key));
            let r = map.next_value_seed(Field(&mut *ctx));
            ctx.at.pop();
            r?;
        }
        ctx.write(b"}")
    }
}

/// An object member's value.
struct Field<'c, 'p, W>(&'c mut Ctx<'p, W>);

impl<'de, W: Write> DeserializeSeed<'de> for Field<'_, '_, W> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.value(d)
    }
}

fn redact(v: &mut Value) -> u64 {
    *v = Value::String("[REDACTED]".into());
    1
}

fn apply(steps: &[Step], v: &mut Value) -> u64 {
    let Some((step, rest)) = steps.split_first() else {
        return redact(v);
    };
    match step {
        Step::Child(name) => v.get_mut(name.as_str()).map_or(0, |c| apply(rest, c)),
        Step::Index(i) => v.get_mut(*i).map_or(0, |c| apply(rest, c)),
        Step::Wildcard => match v {
            Value::Array(a) => a.iter_mut().map(|c| apply(rest, c)).sum(),
            Value::Object(o) => o.values_mut().map(|c| apply(rest, c)).sum(),
            _ => 0,
        },
        Step::Descendant(name) => descend(name, rest, v),
    }
}

fn descend(name: &str, rest: &[Step], v: &mut Value) -> u64 {
    match v {
        Value::Object(o) => o
            .iter_mut()
            .map(|(k, c)| {
                if k == name {
                    apply(rest, c)
                } else {
                    descend(name, rest, c)
                }
            })
            .sum(),
        Value::Array(a) => a.iter_mut().map(|c| descend(name, rest, c)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_select_and_mask() {
        let mut v = json!({
            "customers": [{"name": "a", "ssn": "1"}, {"name": "b", "ssn": "2"}],
            "auth": {"password": "p", "nested": {"password": "q"}},
            "list": [10, 20]
        });
        assert_eq!(
            JsonPath::parse("$.customers[*].ssn").unwrap().mask(&mut v),
            2
        );
        assert_eq!(JsonPath::parse("$..password").unwrap().mask(&mut v), 2);
        assert_eq!(JsonPath::parse("$.list[1]").unwrap().mask(&mut v), 1);
        assert_eq!(
            JsonPath::parse("$['customers'][0].name")
                .unwrap()
                .mask(&mut v),
            1
        );
        assert_eq!(JsonPath::parse("$.missing.x").unwrap().mask(&mut v), 0);
        assert_eq!(
            v,
            json!({
                "customers": [{"name": "[REDACTED]", "ssn": "[REDACTED]"}, {"name": "b", "ssn": "[REDACTED]"}],
                "auth": {"password": "[REDACTED]", "nested": {"password": "[REDACTED]"}},
                "list": [10, "[REDACTED]"]
            })
        );
    }

    /// The streaming rewrite leaves what a parsed tree masked by the same
    /// paths would be, keeps field order, and refuses what is not JSON.
    #[test]
    fn streaming_equals_the_tree() {
        let doc = json!({
            "customers": [{"name": "a", "ssn": "1", "n": 1.5}, {"name": "b\"\u{e9}", "ssn": {"x": [1]}}],
            "auth": {"password": "p", "nested": {"token": null}},
            "list": [10, -20, true, [], {}]
        });
        let text = serde_json::to_vec(&doc).unwrap();
        for paths in [
            vec!["$.customers[*].ssn"],
            vec!["$..password", "$.list[1]", "$.list[3]"],
            vec!["$.*"],
            vec!["$['customers'][0].name", "$.auth.nested.token"],
            vec!["$.missing.x"],
        ] {
            let paths: Vec<JsonPath> = paths.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
            let mut tree = doc.clone();
            let want: u64 = paths.iter().map(|p| p.mask(&mut tree)).sum();
            let mut out = Vec::new();
            let got = mask_stream(&paths, &text, &mut out).unwrap();
            assert_eq!(got, want, "{paths:?}");
            assert_eq!(
                serde_json::from_slice::<Value>(&out).unwrap(),
                tree,
                "{paths:?}"
            );
        }
        let p = [JsonPath::parse("$.b").unwrap()];
        let mut out = Vec::new();
        mask_stream(&p, br#"{"z":1,"b":"s","a":2}"#, &mut out).unwrap();
        assert_eq!(out, br#"{"z":1,"b":"[REDACTED]","a":2}"#);
        for bad in [&b"{\"a\":"[..], b"[1,]", b"{} {}", b"nope"] {
            assert!(mask_stream(&p, bad, &mut Vec::new()).is_err());
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(mask_stream(&p, deep.as_bytes(), &mut Vec::new()).is_err());
    }

    #[test]
    fn bad_paths_are_explained() {
        assert!(
            JsonPath::parse("customers")
                .unwrap_err()
                .contains("must start with $")
        );
        assert!(JsonPath::parse("$").unwrap_err().contains("whole document"));
        assert!(JsonPath::parse("$.a[x]").unwrap_err().contains("[...]"));
        assert!(JsonPath::parse("$..").unwrap_err().contains("field name"));
    }
}
