//! The age keys: the dumper's recipients parse, and the verifier's identity
//! opens what is sealed for them.

use std::io::Write as _;
use std::path::Path;

use backup_core::age_recipients::parse_recipients;
use backup_core::preflight::Check;

/// `BACKUP_AGE_RECIPIENTS` parse (`age.recipients`), and the identity of
/// `AGE_IDENTITY_FILE` opens what is encrypted to one of them
/// (`age.identity`), tried for real with a small message per recipient.
pub fn age_keys(recipients: &str, identity: Option<&Path>) -> Vec<Check> {
    let parsed = if recipients.trim().is_empty() {
        None
    } else {
        Some(parse_recipients(recipients))
    };
    let recipients_check = match &parsed {
        None => Check::skip(
            "age.recipients",
            "not configured (BACKUP_AGE_RECIPIENTS empty): backups are not encrypted",
        ),
        Some(Ok(list)) => Check::pass(
            "age.recipients",
            format!(
                "{} recipient(s): {}",
                list.len(),
                list.iter()
                    .map(|r| short_key(&r.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(Err(e)) => Check::fail("age.recipients", format!("BACKUP_AGE_RECIPIENTS: {e}")).with_fix("list age X25519 public keys (age1…), as `age-keygen -y IDENTITY_FILE` prints them, separated by commas"),
    };
    let identity_check = match (identity, &parsed) {
        (None, _) => Check::skip(
            "age.identity",
            "not configured here (AGE_IDENTITY_FILE unset): set it where the verifier runs",
        ),
        (Some(_), None) => Check::skip(
            "age.identity",
            "no BACKUP_AGE_RECIPIENTS here to match AGE_IDENTITY_FILE against",
        ),
        (Some(_), Some(Err(_))) => {
            Check::not_checked("age.identity", "the recipients do not parse")
        }
        (Some(path), Some(Ok(list))) => identity_matches(path, list),
    };
    vec![recipients_check, identity_check]
}

fn identity_matches(path: &Path, recipients: &[age::x25519::Recipient]) -> Check {
    let identities = match age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .map_err(|e| e.to_string())
        .and_then(|file| file.into_identities().map_err(|e| e.to_string()))
    {
        Ok(identities) => identities,
        Err(e) => {
            return Check::fail(
                "age.identity",
                format!("cannot read AGE_IDENTITY_FILE {}: {e}", path.display()),
            )
            .with_fix(
                "point AGE_IDENTITY_FILE at a file written by age-keygen (AGE-SECRET-KEY-1… lines)",
            );
        }
    };
    let opens = |recipient: &age::x25519::Recipient| -> bool {
        let sealed = (|| {
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                    .ok()?;
            let mut sealed = Vec::new();
            let mut writer = encryptor.wrap_output(&mut sealed).ok()?;
            writer.write_all(b"backupctl doctor").ok()?;
            writer.finish().ok()?;
            Some(sealed)
        })();
        let Some(sealed) = sealed else {
            return false;
        };
        let Ok(decryptor) = age::Decryptor::new_buffered(&sealed[..]) else {
            return false;
        };
        let Ok(mut reader) =
            decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        else {
            return false;
        };
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut plain).is_ok() && plain == b"backupctl doctor"
    };
    let matched: Vec<String> = recipients
        .iter()
        .filter(|r| opens(r))
        .map(|r| short_key(&r.to_string()))
        .collect();
    if matched.is_empty() {
        Check::fail("age.identity", format!(
                "AGE_IDENTITY_FILE {} opens none of the {} recipient(s): encrypted backups could not be verified or restored",
                path.display(),
                recipients.len()
            )).with_fix(format!(
                "compare `age-keygen -y {}` with BACKUP_AGE_RECIPIENTS; use the identity whose public key is listed there",
                path.display()
            ))
    } else {
        Check::pass(
            "age.identity",
            format!(
                "{} opens backups encrypted to {}",
                path.display(),
                matched.join(", ")
            ),
        )
    }
}

/// `age1abcdefgh…` : enough to tell keys apart.
fn short_key(key: &str) -> String {
    let head: String = key.chars().take(12).collect();
    format!("{head}…")
}
