//! A request body as a guardrail sees it: its raw bytes, and the forms a
//! server may decode it into before acting on it. `DROP+TABLE` (form
//! encoding), `DROP%20TABLE` (percent) and `"\u0044ROP TABLE"` (a JSON
//! escape) all reach a database as `DROP TABLE`; a deny rule's `body_regex`
//! must see them that way.
use serde_json::Value;

/// The body, read for inspection, with its decoded forms.
pub struct InspectedBody {
    pub raw: Vec<u8>,
    /// Form/percent-decoded, JSON strings unescaped, and both (only those
    /// that differ from the raw bytes).
    decoded: Vec<Vec<u8>>,
}

/// Separates JSON strings in their decoded form: no `\s` or `\b` spans it,
/// so a pattern does not match across two values.
const SEP: u8 = 0;

impl InspectedBody {
    pub fn new(raw: Vec<u8>) -> InspectedBody {
        let mut decoded = Vec::new();
        let form = (raw.contains(&b'%') || raw.contains(&b'+')).then(|| form_decoded(&raw));
        if let Some(j) = json_strings(&raw) {
            decoded.push(j);
        }
        if let Some(f) = form {
            if let Some(j) = json_strings(&f) {
                decoded.push(j);
            }
            decoded.push(f);
        }
        decoded.retain(|d| *d != raw);
        InspectedBody { raw, decoded }
    }

    /// Raw bytes first, then every decoded form.
    pub fn forms(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.raw.as_slice()).chain(self.decoded.iter().map(Vec::as_slice))
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a
/// byte), by the url crate family's parser, pairs rejoined as sent.
fn form_decoded(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, (k, v)) in form_urlencoded::parse(raw).enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k.as_bytes());
        if !v.is_empty() {
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
        }
    }
    out
}

/// Every key and string value of a JSON document, unescaped; `None` if the
/// bytes are not JSON (a server would not parse them as JSON either).
fn json_strings(raw: &[u8]) -> Option<Vec<u8>> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'{' | b'[' | b'"') {
        return None;
    }
    let doc: Value = serde_json::from_slice(raw).ok()?;
    let mut out = Vec::new();
    walk(&doc, &mut out);
    Some(out)
}

fn walk(v: &Value, out: &mut Vec<u8>) {
    let push = |s: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(s.as_bytes());
        out.push(SEP);
    };
    match v {
        Value::String(s) => push(s, out),
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                push(k, out);
                walk(x, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(raw: &str) -> Vec<String> {
        InspectedBody::new(raw.as_bytes().to_vec())
            .forms()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn decodings_a_server_applies() {
        assert!(forms("q=DROP+TABLE+x").contains(&"q=DROP TABLE x".to_string()));
        assert!(forms("DROP%20TABLE").contains(&"DROP TABLE".to_string()));
        assert!(forms(r#"{"q":"\u0044ROP TABLE"}"#).contains(&"q\0DROP TABLE\0".to_string()));
        // JSON inside a form field.
        assert!(
            forms("%7B%22q%22%3A%22%5Cu0044ROP%22%7D")
                .iter()
                .any(|f| f == "q\0DROP\0")
        );
        // Plain text has one form.
        assert_eq!(forms("select 1"), ["select 1"]);
        // Not JSON: no JSON form.
        assert_eq!(forms(r#"{"q": \u0044"#).len(), 1);
    }
}
