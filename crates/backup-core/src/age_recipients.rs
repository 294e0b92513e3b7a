//! The age recipients that artifacts are sealed for: the dumper encrypts
//! to them, `backupctl doctor` checks that the identity opens what they
//! seal. No retries: a key is well-formed or not.

/// Parses `BACKUP_AGE_RECIPIENTS`: X25519 public keys (`age1...`) separated
/// by commas, spaces or newlines.
pub fn parse_recipients(text: &str) -> Result<Vec<age::x25519::Recipient>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|key| {
            key.parse::<age::x25519::Recipient>().map_err(|e| {
                let shown: String = key.chars().take(20).collect();
                format!("{shown}… is not an age X25519 recipient (age1…): {e}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse() {
        assert!(parse_recipients("not-a-key").is_err());
        assert!(parse_recipients("").unwrap().is_empty());
    }
}
