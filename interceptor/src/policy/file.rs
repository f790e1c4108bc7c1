//! Policy files: parse, validate, and point at the exact place of every error.
use super::{Action, Destination, Policy, Rule};
use globset::{GlobBuilder, GlobSetBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// An error in a policy file, located as file:line:col (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    rule: Vec<Spanned<RuleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    id: Spanned<String>,
    #[serde(default)]
    workload: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    destination: Option<Spanned<OneOrMany>>,
    action: Spanned<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Byte offset → (line, col), both 1-based.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub fn load_dir(dir: &Path) -> Result<Policy, Vec<PolicyError>> {
    let err = |message: String| PolicyError {
        file: dir.to_path_buf(),
        line: 0,
        col: 0,
        message,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| vec![err(format!("cannot read the policy directory: {e}"))])?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut policy = Policy {
        rules: Vec::new(),
        files: files.clone(),
    };
    let mut errors = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => parse_file(f, &text, &mut policy.rules, &mut seen, &mut errors),
            Err(e) => errors.push(PolicyError {
                file: f.clone(),
                line: 0,
                col: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

pub fn parse_file(
    file: &Path,
    text: &str,
    rules: &mut Vec<Rule>,
    seen: &mut HashMap<String, String>,
    errors: &mut Vec<PolicyError>,
) {
    let at = |offset: usize, message: String| {
        let (line, col) = line_col(text, offset);
        PolicyError {
            file: file.to_path_buf(),
            line,
            col,
            message,
        }
    };
    let doc: FileDoc = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            errors.push(at(offset, e.message().to_string()));
            return;
        }
    };
    for spanned in doc.rule {
        let rule_start = spanned.span().start;
        let r = spanned.into_inner();
        let (line, _) = line_col(text, rule_start);
        let origin = format!("{}:{line}", file.display());
        let id = r.id.get_ref().trim().to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errors.push(at(
                r.id.span().start,
                format!("rule id {id:?} must be non-empty letters, digits, '-', '_' or '.'"),
            ));
        } else if let Some(prev) = seen.insert(id.clone(), origin.clone()) {
            errors.push(at(
                r.id.span().start,
                format!("duplicate rule id {id:?} (first defined at {prev})"),
            ));
        }
        let action = match r.action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                errors.push(at(
                    r.action.span().start,
                    format!("unknown action {other:?}; expected \"allow\" or \"deny\""),
                ));
                continue;
            }
        };
        let workloads = match &r.workload {
            None => None,
            Some(w) => {
                let mut b = GlobSetBuilder::new();
                let mut ok = true;
                for pat in w.get_ref().items() {
                    let pat = pat.trim_start_matches('/');
                    match GlobBuilder::new(pat).literal_separator(true).build() {
                        Ok(g) => {
                            b.add(g);
                        }
                        Err(e) => {
                            errors
                                .push(at(w.span().start, format!("workload pattern {pat:?}: {e}")));
                            ok = false;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                match b.build() {
                    Ok(set) => Some(set),
                    Err(e) => {
                        errors.push(at(w.span().start, format!("workload patterns: {e}")));
                        continue;
                    }
                }
            }
        };
        let destinations = match &r.destination {
            None => None,
            Some(d) => {
                let mut out = Vec::new();
                for s in d.get_ref().items() {
                    match Destination::parse(s) {
                        Ok(x) => out.push(x),
                        Err(e) => errors.push(at(d.span().start, format!("destination: {e}"))),
                    }
                }
                Some(out)
            }
        };
        rules.push(Rule {
            id,
            workloads,
            destinations,
            action,
            reason: r.reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempdir;
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let dir = tempdir();
        std::fs::write(dir.join("p.toml"), text).unwrap();
        let e = load_dir(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        e.iter()
            .map(|e| e.to_string().split_once("/p.toml:").unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\nx");
        assert!(e[0].starts_with("3:"), "{e:?}");
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let e = errors("[[rule]]\nid = \"a\"\naction = \"alow\"\n");
        assert!(e[0].starts_with("3:10: unknown action"), "{e:?}");
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\ndestination = [\"nope.example:1\"]\n",
        );
        assert!(e[0].starts_with("4:15: destination"), "{e:?}");
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\n[[rule]]\nid = \"a\"\naction = \"deny\"\n",
        );
        assert!(e[0].starts_with("5:6: duplicate rule id"), "{e:?}");
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\"\nmethod = \"GET\"\n");
        assert!(e[0].contains("unknown field `method`"), "{e:?}");
    }
}
