//! A file being read from a destination as a stream: the kinds' readers
//! behind one `AsyncRead`. Errors come out as `io::Error`;
//! [`StoreError::from_io`](crate::StoreError::from_io) recovers the
//! classified error (an S3 body that fails mid-stream becomes
//! [`S3Error::Unreachable`], transient, naming the endpoint). Dropping the
//! reader stops the download.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use remote_s3::{S3Error, S3Reader};
use remote_sftp::RemoteReader;
use tokio::io::{AsyncRead, ReadBuf};

/// A streaming read of one stored file (see [`Store::open_read`](crate::Store::open_read)).
#[derive(Debug)]
pub struct StoreReader(pub(crate) Inner);

#[derive(Debug)]
pub(crate) enum Inner {
    Sftp(RemoteReader),
    /// `endpoint` is the S3 service's, for the error of a cut body.
    S3 {
        reader: S3Reader,
        endpoint: String,
    },
}

impl StoreReader {
    /// Size of the file when it was opened, if the destination said.
    pub fn size(&self) -> Option<u64> {
        match &self.0 {
            Inner::Sftp(reader) => reader.size(),
            Inner::S3 { reader, .. } => reader.size(),
        }
    }
}

impl AsyncRead for StoreReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Sftp(reader) => Pin::new(reader).poll_read(cx, buf),
            Inner::S3 { reader, endpoint } => match Pin::new(reader).poll_read(cx, buf) {
                Poll::Ready(Err(error)) if !carries_s3_error(&error) => {
                    Poll::Ready(Err(io::Error::new(
                        error.kind(),
                        S3Error::Unreachable {
                            op: "GetObject",
                            endpoint: endpoint.clone(),
                            detail: error.to_string(),
                        },
                    )))
                }
                other => other,
            },
        }
    }
}

fn carries_s3_error(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<S3Error>())
}
