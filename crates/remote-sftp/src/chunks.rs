//! How large each READ and WRITE request is and how many are kept in
//! flight: what the server announces (`limits@openssh.com`) or the size
//! every server accepts, and a pipeline deep enough to hide round trips.

/// Largest data block per READ/WRITE request. OpenSSH's sftp-server caps
/// both at 255 KiB (its 256 KiB packet limit minus headers) and says so via
/// `limits@openssh.com`.
pub(crate) const MAX_CHUNK: u32 = 255 * 1024;
/// Block size for servers that do not announce limits: the size every
/// server must accept, and what OpenSSH's own client uses then.
pub(crate) const DEFAULT_CHUNK: u32 = 32 * 1024;
/// Bytes kept in flight per transfer: 4 MiB hides a round trip of ~40 ms
/// at 100 MB/s and keeps memory flat.
pub(crate) const IN_FLIGHT_BYTES: usize = 4 << 20;
/// Largest SFTP packet we accept; must hold a full READ reply.
pub(crate) const MAX_PACKET: u32 = 256 * 1024;

/// Requests to keep in flight for blocks of `chunk` bytes: about
/// [`IN_FLIGHT_BYTES`], at least 16 (small files still overlap) and at most
/// 64 (OpenSSH's default, servers may queue no more).
pub(crate) fn pipeline_depth(chunk: u32) -> usize {
    (IN_FLIGHT_BYTES / chunk.max(1) as usize).clamp(16, 64)
}

pub(crate) fn clamp_chunk(chunk: u32, limit: Option<u64>) -> u32 {
    match limit {
        Some(limit) if limit > 0 => chunk.min(u32::try_from(limit).unwrap_or(u32::MAX)),
        _ => chunk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_depth_targets_a_few_mib() {
        assert_eq!(pipeline_depth(MAX_CHUNK), 16);
        assert_eq!(pipeline_depth(DEFAULT_CHUNK), 64);
        assert_eq!(pipeline_depth(0), 64);
    }
}
