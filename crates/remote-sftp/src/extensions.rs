//! The OpenSSH extensions this crate uses: their names, which of them a
//! server offered, and the wire encoding of their requests.

pub(crate) const EXT_POSIX_RENAME: &str = "posix-rename@openssh.com";
pub(crate) const EXT_FSYNC: &str = "fsync@openssh.com";
pub(crate) const EXT_STATVFS: &str = "statvfs@openssh.com";
pub(crate) const EXT_LIMITS: &str = "limits@openssh.com";

/// Which OpenSSH extensions the server offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerFeatures {
    /// Atomic rename that replaces the target (`rename(2)`).
    pub posix_rename: bool,
    /// `fsync(2)` on an open handle.
    pub fsync: bool,
    /// `statvfs(2)`, used to recognise a full disk behind a generic failure.
    pub statvfs: bool,
}

/// SSH wire encoding of strings (u32 length + bytes), the payload of the
/// OpenSSH extended requests.
pub(crate) fn encode_strings(strings: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        let len = u32::try_from(s.len()).expect("SFTP paths are far below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

pub(crate) fn version_has(
    extensions: &std::collections::HashMap<String, String>,
    name: &str,
    version: &str,
) -> bool {
    extensions.get(name).is_some_and(|v| v == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_length_prefixed() {
        assert_eq!(
            encode_strings(&["ab", ""]),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }
}
