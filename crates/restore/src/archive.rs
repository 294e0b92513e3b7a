//! The artifacts that are not databases, checked without restoring: a
//! `pg_dumpall --globals-only` script must consist of complete statements;
//! a tar archive of media must have valid headers all the way to its end
//! marker. Both are streamed through the same download and decoding as a
//! restore ([`check_archive`]); the parsers ([`Lister`]) keep nothing but
//! counters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use backup_core::manifest::Manifest;
use backup_core::names::DumpFormat;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::decode::{decode_error, decoded, identity_for};
use crate::download::{Download, Downloaded};
use crate::error::VerifyError;
use crate::meter::{Meter, Phase, ProgressFn};
use crate::options::{RestoreOptions, RestoreReport};
use crate::sqlfilter::PlainFilter;
use crate::{CHUNK, millis};

/// Globals scripts and media archives are not restored (roles are global
/// to a server; media are files): they are checksummed, decrypted,
/// decompressed and parsed — every SQL statement of a globals script must
/// be complete, every tar header must be valid — and what they hold is
/// listed in the checks.
pub async fn check_archive<R>(
    reader: R,
    manifest: Manifest,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
    meter: &Meter,
) -> Result<RestoreReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    identity_for(&manifest, options)?;
    let artifact = manifest.artifact.to_string();
    let kind = manifest.artifact.kind();
    let started = Instant::now();
    meter.set_phase(Phase::Download);
    let (download, stored) = Download::start(reader, manifest.size_bytes, progress, meter);
    let parsed = async {
        let mut data = decoded(stored, &manifest, options).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut lister = Lister::new(kind.format);
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(|e| decode_error(&manifest, &e))?;
            if n == 0 {
                break;
            }
            lister.push(&buf[..n]);
        }
        lister.finish().map_err(|detail| VerifyError::Restore {
            artifact: artifact.clone(),
            detail,
        })
    }
    .await;
    let Downloaded {
        sha256,
        bytes,
        took,
    } = download.finish(&manifest).await?;
    let listed = parsed?;
    let mut checks = vec![format!("sha256 of {bytes} bytes as stored")];
    if kind.encrypted {
        checks.push("age decryption".into());
    }
    checks.push("decompression".into());
    checks.push(listed);
    Ok(RestoreReport {
        sha256,
        bytes,
        format: kind.format,
        skipped: Vec::new(),
        extensions: Vec::new(),
        checks,
        steps: BTreeMap::from([
            ("download".to_owned(), millis(took)),
            ("parse".to_owned(), millis(started.elapsed())),
        ]),
    })
}

#[derive(Debug)]
pub enum Lister {
    Globals {
        filter: Box<PlainFilter>,
        roles: u64,
        statements_seen: bool,
        line_start: Vec<u8>,
    },
    Tar(TarWalker),
}

impl Lister {
    pub fn new(format: DumpFormat) -> Self {
        match format {
            DumpFormat::Tar => Lister::Tar(TarWalker::default()),
            _ => Lister::Globals {
                filter: Box::new(PlainFilter::new(BTreeSet::new(), BTreeSet::new())),
                roles: 0,
                statements_seen: false,
                line_start: Vec::new(),
            },
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        match self {
            Lister::Globals {
                filter,
                roles,
                statements_seen,
                line_start,
            } => {
                let mut out = Vec::new();
                filter.push(data, &mut out);
                // Count role creations on what passed (all of it: a
                // filter without roles only drops ownership/privileges).
                for line in out.split(|&b| b == b'\n') {
                    line_start.clear();
                    line_start.extend_from_slice(&line[..line.len().min(12)]);
                    if line_start.starts_with(b"CREATE ROLE ") {
                        *roles += 1;
                    }
                    if line.ends_with(b";") {
                        *statements_seen = true;
                    }
                }
            }
            Lister::Tar(walker) => walker.push(data),
        }
    }

    /// What the archive holds, or why it is not valid.
    pub fn finish(self) -> Result<String, String> {
        match self {
            Lister::Globals {
                mut filter,
                roles,
                statements_seen,
                ..
            } => {
                let mut out = Vec::new();
                filter.finish(&mut out);
                if !filter.at_statement_boundary() {
                    return Err("the globals script ends inside a statement".into());
                }
                if !statements_seen {
                    return Err("the globals script holds no statement".into());
                }
                Ok(format!("globals script parsed: {roles} role(s) created"))
            }
            Lister::Tar(walker) => walker.finish(),
        }
    }
}

/// Walks ustar/GNU tar headers: 512-byte blocks, a header then the data
/// rounded up to 512, two zero blocks at the end.
#[derive(Debug, Default)]
pub struct TarWalker {
    block: Vec<u8>,
    /// Data bytes (with padding) still to skip before the next header.
    skip: u64,
    entries: u64,
    bytes: u64,
    ended: bool,
    error: Option<String>,
}

impl TarWalker {
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() && !self.ended {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let want = 512 - self.block.len();
            let n = want.min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == 512 {
                let block = std::mem::take(&mut self.block);
                self.header(&block);
            }
        }
    }

    fn header(&mut self, block: &[u8]) {
        if block.iter().all(|&b| b == 0) {
            self.ended = true;
            return;
        }
        let stored = parse_octal(&block[148..156]);
        let computed: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != Some(computed) {
            self.error = Some(format!(
                "tar header {} has a bad checksum",
                self.entries + 1
            ));
            return;
        }
        let Some(size) = parse_octal(&block[124..136]) else {
            self.error = Some(format!("tar header {} has a bad size", self.entries + 1));
            return;
        };
        self.entries += 1;
        self.bytes += size;
        self.skip = size.div_ceil(512) * 512;
    }

    pub fn finish(self) -> Result<String, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if !self.ended || self.skip > 0 {
            return Err(format!(
                "the tar archive is truncated after {} entries",
                self.entries
            ));
        }
        Ok(format!(
            "tar archive listed: {} entries, {} bytes of content",
            self.entries, self.bytes
        ))
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}
