//! Command lines for the settings tests of the services: a base set of
//! `--flag value` pairs that make a valid configuration, with the test's
//! own flags replacing the base pairs they name (clap refuses a flag given
//! twice).

/// `binary`, then every pair of `base` whose flag `extra` does not name,
/// then `extra`.
pub fn with_overrides<'a>(binary: &'a str, base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let overridden = |flag: &str| extra.contains(&flag);
    let mut argv = vec![binary];
    argv.extend(
        base.chunks(2)
            .filter(|pair| !overridden(pair[0]))
            .flatten()
            .copied(),
    );
    argv.extend_from_slice(extra);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_flags_replace_the_base_pairs_they_name() {
        let base = ["--host", "a", "--port", "22"];
        assert_eq!(
            with_overrides("svc", &base, &["--port", "2222", "--dry-run"]),
            ["svc", "--host", "a", "--port", "2222", "--dry-run"]
        );
        assert_eq!(
            with_overrides("svc", &base, &[]),
            ["svc", "--host", "a", "--port", "22"]
        );
    }
}
