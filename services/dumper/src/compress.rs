//! The one streaming pass from a producer (pg_dump's stdout, a tar stream)
//! to the artifact file: compression on every core, optional age
//! encryption, sha256 of the bytes as stored, and the file.
//!
//! gzip: the input is cut into independent 1 MiB blocks compressed in
//! parallel on blocking threads, each one a complete gzip member, written in
//! order. A multi-member stream is plain RFC 1952: `gzip -t`, `zcat`,
//! `gunzip | psql` and every decoder that follows the RFC read it as one
//! file. zstd: libzstd's own worker threads (`nbWorkers`).
//!
//! Memory stays flat whatever the dump size: at most `threads + 1` blocks
//! are being compressed and a few finished blocks wait for the writer.
//!
//! No retries here: a failure (a full disk, a dead producer) ends the pass
//! and the caller removes the partial file.

use std::io::{self, BufWriter, Write};
use std::num::NonZeroUsize;

pub use backup_core::age_recipients::parse_recipients;
use backup_core::files::Digester;
use backup_core::names::{Compression, Sha256Hex};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Size of the blocks gzip compresses independently. Big enough that the
/// per-member cost (a fresh 32 KiB window, 18 bytes of header and trailer)
/// is lost in the noise, small enough that memory stays a few MiB.
pub const BLOCK_SIZE: usize = 1 << 20;

/// Input of one zstd worker job.
const ZSTD_JOB_SIZE: u32 = 4 << 20;

/// Compressed blocks waiting for the writer thread.
const WRITER_QUEUE: usize = 4;

/// gzip level when none is configured, chosen by measurement
/// (docs/benchmarks.md): zlib-rs level 2 keeps the dump stage near
/// `pg_dump`'s own speed for an artifact within a few percent of `pigz -6`.
/// Level 1 uses fixed Huffman codes, which cannot shrink the hex of
/// `bytea` columns. `gzip:6` still gives level 6.
pub const DEFAULT_GZIP_LEVEL: u32 = 2;
/// zstd level when none is configured: the zstd CLI's default.
pub const DEFAULT_ZSTD_LEVEL: u32 = 3;

/// How to compress and whether to encrypt.
#[derive(Clone)]
pub struct Codec {
    pub compression: Compression,
    pub level: Option<u32>,
    /// Compression threads; every core by default.
    pub threads: usize,
    /// age X25519 recipients; empty means not encrypted.
    pub recipients: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("compression", &self.compression)
            .field("level", &self.level)
            .field("threads", &self.threads)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Codec {
    pub fn new(compression: Compression, level: Option<u32>) -> Self {
        Self {
            compression,
            level,
            threads: available_cores(),
            recipients: Vec::new(),
        }
    }

    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }

    fn level(&self) -> u32 {
        self.level.unwrap_or(match self.compression {
            Compression::Gzip => DEFAULT_GZIP_LEVEL,
            Compression::Zstd => DEFAULT_ZSTD_LEVEL,
        })
    }
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// What one pass produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub sha256: Sha256Hex,
    /// Bytes of the artifact as stored.
    pub size_bytes: u64,
    /// Bytes the producer sent (uncompressed).
    pub input_bytes: u64,
}

/// Streams `input` through the codec into `file`. The file is flushed but
/// not fsynced; the caller commits it.
pub async fn stream_to_file<R>(
    mut input: R,
    file: std::fs::File,
    codec: &Codec,
) -> io::Result<Written>
where
    R: AsyncRead + Unpin,
{
    let (to_writer, from_producer) = mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    let writer_codec = codec.clone();
    let writer =
        tokio::task::spawn_blocking(move || write_blocks(from_producer, file, &writer_codec));

    let produced = produce(&mut input, &to_writer, codec).await;
    drop(to_writer);
    let written = writer
        .await
        .map_err(|e| io::Error::other(format!("the writer thread failed: {e}")))?;
    // The writer's error is the cause (a full disk); the producer only saw
    // the channel close because of it.
    let (sha256, size_bytes) = written?;
    let input_bytes = produced?;
    Ok(Written {
        sha256,
        size_bytes,
        input_bytes,
    })
}

/// Reads `input` in blocks and hands them to the writer, compressed (gzip)
/// or raw (zstd compresses on the writer side with its own threads). Ends
/// with an empty block, the end-of-stream mark: a writer that never gets it
/// does not finish the trailers, so an aborted pass can never look whole.
async fn produce<R: AsyncRead + Unpin>(
    input: &mut R,
    to_writer: &mpsc::Sender<Vec<u8>>,
    codec: &Codec,
) -> io::Result<u64> {
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the writer stopped");
    let mut total = 0u64;
    let mut in_flight = FuturesOrdered::new();
    let max_in_flight = codec.threads.max(1) + 1;
    let level = flate2::Compression::new(codec.level());
    loop {
        let block = read_block(input).await?;
        let last = block.is_empty();
        total += block.len() as u64;
        match codec.compression {
            Compression::Zstd => {
                if !last {
                    to_writer.send(block).await.map_err(|_| closed())?;
                }
            }
            Compression::Gzip => {
                // An empty input still makes one (empty) member: a file
                // with none is not valid gzip.
                if !last || total == 0 {
                    in_flight.push_back(tokio::task::spawn_blocking(move || {
                        gzip_member(&block, level)
                    }));
                }
                while in_flight.len() >= max_in_flight || (last && !in_flight.is_empty()) {
                    let member = in_flight.next().await.expect("not empty").map_err(|e| {
                        io::Error::other(format!("a compression thread failed: {e}"))
                    })??;
                    to_writer.send(member).await.map_err(|_| closed())?;
                }
            }
        }
        if last {
            to_writer.send(Vec::new()).await.map_err(|_| closed())?;
            return Ok(total);
        }
    }
}

/// Up to [`BLOCK_SIZE`] bytes; empty only at the end of the input.
async fn read_block<R: AsyncRead + Unpin>(input: &mut R) -> io::Result<Vec<u8>> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut filled = 0;
    while filled < BLOCK_SIZE {
        let n = input.read(&mut block[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    block.truncate(filled);
    Ok(block)
}

/// One complete gzip member (header, deflate stream, CRC32 and size).
fn gzip_member(block: &[u8], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(block.len() / 3), level);
    encoder.write_all(block)?;
    encoder.finish()
}

/// The writer thread: (zstd) → (age) → sha256 → file.
fn write_blocks(
    mut from_producer: mpsc::Receiver<Vec<u8>>,
    file: std::fs::File,
    codec: &Codec,
) -> io::Result<(Sha256Hex, u64)> {
    let hashing = HashingFile {
        file: BufWriter::with_capacity(256 * 1024, file),
        digest: Digester::default(),
    };
    let stored = if codec.encrypted() {
        let encryptor = age::Encryptor::with_recipients(
            codec.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Stored::Age(encryptor.wrap_output(hashing)?)
    } else {
        Stored::Plain(hashing)
    };
    let mut sink = match codec.compression {
        Compression::Gzip => Sink::Ready(stored),
        Compression::Zstd => {
            let level = i32::try_from(codec.level()).unwrap_or(3);
            let mut encoder = zstd::stream::write::Encoder::new(stored, level)?;
            // The frame checksum lets `zstd -t` and the verifier catch
            // corruption, as the zstd CLI does by default.
            encoder.include_checksum(true)?;
            let workers = u32::try_from(codec.threads).unwrap_or(1);
            if workers > 1 {
                encoder.multithread(workers)?;
                // libzstd's default job (4 windows, 8 MiB at level 3) times
                // its buffers per worker is what dominates memory.
                encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            Sink::Zstd(encoder)
        }
    };
    let mut ended = false;
    while let Some(block) = from_producer.blocking_recv() {
        if block.is_empty() {
            ended = true;
            break;
        }
        sink.write_all(&block)?;
    }
    if !ended {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the input ended abnormally",
        ));
    }
    let stored = match sink {
        Sink::Ready(stored) => stored,
        Sink::Zstd(encoder) => encoder.finish()?,
    };
    let mut hashing = match stored {
        Stored::Plain(hashing) => hashing,
        Stored::Age(writer) => writer.finish()?,
    };
    hashing.file.flush()?;
    Ok(hashing.digest.finish())
}

enum Sink {
    Ready(Stored),
    Zstd(zstd::stream::write::Encoder<'static, Stored>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Ready(stored) => stored.write_all(data),
            Sink::Zstd(encoder) => encoder.write_all(data),
        }
    }
}

enum Stored {
    Plain(HashingFile),
    Age(age::stream::StreamWriter<HashingFile>),
}

impl Write for Stored {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stored::Plain(w) => w.write(buf),
            Stored::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stored::Plain(w) => w.flush(),
            Stored::Age(w) => w.flush(),
        }
    }
}

struct HashingFile {
    file: BufWriter<std::fs::File>,
    digest: Digester,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    async fn round_trip(compression: Compression, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let written = stream_to_file(data, file, &Codec::new(compression, Some(1)))
            .await
            .unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(written.size_bytes, stored.len() as u64);
        assert_eq!(written.input_bytes, data.len() as u64);
        let mut out = Vec::new();
        match compression {
            Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(&stored[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(&stored[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    /// `gzip:6` is level 6 whatever the default: the same members, byte
    /// for byte, as before the default changed.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_explicit_level_is_kept() {
        let data: Vec<u8> = (0..(BLOCK_SIZE * 2 + 4567))
            .map(|i| (i / 13 % 97) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        stream_to_file(&data[..], file, &Codec::new(Compression::Gzip, Some(6)))
            .await
            .unwrap();
        let expected: Vec<u8> = data
            .chunks(BLOCK_SIZE)
            .flat_map(|block| gzip_member(block, flate2::Compression::new(6)).unwrap())
            .collect();
        assert!(std::fs::read(&path).unwrap() == expected);
        assert_eq!(Codec::new(Compression::Gzip, Some(6)).level(), 6);
        assert_eq!(
            Codec::new(Compression::Gzip, None).level(),
            DEFAULT_GZIP_LEVEL
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn blocks_come_back_in_order() {
        let data: Vec<u8> = (0..(BLOCK_SIZE * 5 + 123))
            .map(|i| (i / 7 % 251) as u8)
            .collect();
        for compression in [Compression::Gzip, Compression::Zstd] {
            assert!(round_trip(compression, &data).await == data);
            assert!(round_trip(compression, b"").await.is_empty());
        }
    }
}
