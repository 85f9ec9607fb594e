//! How the CLI reports a failure: one line a person can act on. The chain and a backtrace are
//! there when asked for (`--verbose`, `RUST_BACKTRACE`).

/// Whether the environment asks for backtraces (as the standard library reads it).
pub fn backtrace_requested() -> bool {
    ["RUST_LIB_BACKTRACE", "RUST_BACKTRACE"]
        .iter()
        .find_map(|var| std::env::var(var).ok())
        .is_some_and(|v| v != "0")
}

/// The error and its causes on one line, `outer: cause: root cause`, without the repeats that
/// wrapped errors often carry (a cause already quoted by the message above it is left out).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = flatten(&cause.to_string());
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// A clap usage error's first line, without its `error: ` prefix.
pub fn clap_line(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let first = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid arguments");
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Whitespace runs (newlines included) as single spaces.
fn flatten(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let root =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection\nrefused");
        let error = Err::<(), _>(root)
            .context("backend stats: connection refused")
            .context("status")
            .unwrap_err();
        assert_eq!(
            one_line(&error),
            "status: backend stats: connection refused"
        );
        let error = anyhow::anyhow!("disk full").context("write index");
        assert_eq!(one_line(&error), "write index: disk full");
    }

    #[test]
    fn a_usage_error_is_its_first_line() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[arg(long)]
            limit: usize,
        }
        let error = Cli::try_parse_from(["etl", "--limit", "many"]).unwrap_err();
        let line = clap_line(&error);
        assert!(
            line.starts_with("invalid value 'many' for '--limit"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
