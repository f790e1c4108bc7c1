//! JSON field paths for masking: `$.a.b`, `$.list[*].ssn`, `$.list[0]`,
//! `$..password` (any depth), `$.*`.
//!
//! A small hand-written subset of JSONPath (RFC 9535) on purpose: masking
//! needs to *replace* the selected values in place, which the JSONPath
//! crates (they return read-only node lists) do not offer, and only these
//! selectors are needed.
use serde_json::Value;

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

    /// Replaces every selected value with `[REDACTED]`; returns how many.
    pub fn mask(&self, v: &mut Value) -> u64 {
        apply(&self.steps, v)
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
