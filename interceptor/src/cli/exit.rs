//! Exit codes, as `doctor` and the checkers operators script against use
//! them: 0 all is well; 1 the command ran and found a problem (a policy
//! error, a broken audit chain, a denied request, missing hooks); 2 it
//! could not check (no daemon or store, unreadable files, bad usage:
//! clap's own usage errors exit 2 too).

pub const FOUND: i32 = 1;
pub const COULD_NOT: i32 = 2;

/// A problem the command was asked to look for, and found.
#[derive(Debug)]
pub struct Found(pub String);

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Found {}

pub fn found(message: impl Into<String>) -> anyhow::Error {
    Found(message.into()).into()
}

/// The exit code for an error a command returned.
pub fn code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Found>().is_some() {
        FOUND
    } else {
        COULD_NOT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_is_one_and_anything_else_two() {
        assert_eq!(code(&found("2 error(s) in policies")), FOUND);
        let wrapped = found("chain broken").context("audit verify");
        assert_eq!(code(&wrapped), FOUND);
        assert_eq!(code(&anyhow::anyhow!("no daemon listens")), COULD_NOT);
    }
}
