//! Choosing a pg_dump that can dump the server: its major version must be
//! the server's or newer, or the dump could be refused or, worse, partial.

use std::path::{Path, PathBuf};

use crate::error::DumpError;

/// The server's major version from `server_version_num` (e.g. 150019 → 15).
pub fn server_major(server_version_num: u32) -> u32 {
    server_version_num / 10000
}

/// Picks a pg_dump for a server of `server_major`: the one in `pinned_dir`
/// if given (checked), otherwise the oldest installed client under
/// `/usr/lib/postgresql/<N>/bin` with `N >= server_major`, otherwise
/// `pg_dump` on PATH if new enough.
pub async fn select(
    server_major: u32,
    pinned_dir: Option<&Path>,
) -> Result<(PathBuf, String), DumpError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = pinned_dir {
        candidates.push(dir.join("pg_dump"));
    } else {
        let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major: u32 = entry.file_name().to_str()?.parse().ok()?;
                let path = entry.path().join("bin/pg_dump");
                path.exists().then_some((major, path))
            })
            .collect();
        installed.sort();
        candidates.extend(
            installed
                .into_iter()
                .filter(|(m, _)| *m >= server_major)
                .map(|(_, p)| p),
        );
        candidates.push(PathBuf::from("pg_dump"));
    }
    let mut found = Vec::new();
    for candidate in candidates {
        let Ok(output) = tokio::process::Command::new(&candidate)
            .arg("--version")
            .output()
            .await
        else {
            continue;
        };
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let major = version
            .split_whitespace()
            .find_map(|word| word.split('.').next()?.parse::<u32>().ok())
            .unwrap_or(0);
        if major >= server_major {
            return Ok((candidate, version));
        }
        found.push(version);
    }
    Err(DumpError::NoMatchingPgDump {
        server_major,
        found: if found.is_empty() {
            "none".into()
        } else {
            found.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn majors() {
        assert_eq!(super::server_major(150019), 15);
        assert_eq!(super::server_major(170002), 17);
    }
}
