//! Reading remote files: a small one whole (bounded by a maximum size), a
//! small range of any file, or any size as a stream with several READ
//! requests in flight.

use std::sync::Arc;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::{RemoteError, RemoteReader, SftpRemote};

impl SftpRemote {
    /// Reads a whole small file; fails with [`RemoteError::TooLarge`] if it
    /// has more than `max_len` bytes.
    pub async fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let result = self.read_small(&handle, path, max_len).await;
        self.close_quietly(handle).await;
        result
    }

    async fn read_small(
        &self,
        handle: &str,
        path: &str,
        max_len: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let size = self
            .sftp
            .fstat(handle)
            .await
            .map_err(|e| self.error("stat", path, e))?
            .attrs
            .size;
        if let Some(size) = size
            && size > max_len
        {
            return Err(RemoteError::TooLarge {
                path: path.to_owned(),
                size,
                max_len,
            });
        }
        let capacity = size.unwrap_or(0).min(max_len);
        let mut contents = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        loop {
            let offset = contents.len() as u64;
            match self.sftp.read(handle, offset, self.read_chunk).await {
                Ok(data) if data.data.is_empty() => break,
                Ok(data) => contents.extend_from_slice(&data.data),
                Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => break,
                Err(error) => return Err(self.error("read", path, error)),
            }
            // The file may grow after the fstat above.
            if contents.len() as u64 > max_len {
                return Err(RemoteError::TooLarge {
                    path: path.to_owned(),
                    size: contents.len() as u64,
                    max_len,
                });
            }
        }
        Ok(contents)
    }

    /// Reads up to `len` bytes (a few chunks at most, one request at a
    /// time) from `offset`; fewer if the file ends first.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let mut contents = Vec::with_capacity(len as usize);
        let result = loop {
            let left = len - contents.len() as u32;
            if left == 0 {
                break Ok(());
            }
            let at = offset + contents.len() as u64;
            match self
                .sftp
                .read(handle.as_str(), at, left.min(self.read_chunk))
                .await
            {
                Ok(data) if data.data.is_empty() => break Ok(()),
                Ok(data) => {
                    let take = data.data.len().min(left as usize);
                    contents.extend_from_slice(&data.data[..take]);
                }
                Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                    break Ok(());
                }
                Err(error) => break Err(self.error("read", path, error)),
            }
        };
        self.close_quietly(handle).await;
        result.map(|()| contents)
    }

    /// Opens a remote file for a streaming, pipelined download (several
    /// 255 KiB reads in flight).
    pub async fn open_read(&self, path: &str) -> Result<RemoteReader, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let size = match self.sftp.fstat(handle.as_str()).await {
            Ok(attrs) => attrs.attrs.size,
            Err(error) => {
                let error = self.error("stat", path, error);
                self.close_quietly(handle).await;
                return Err(error);
            }
        };
        Ok(RemoteReader::spawn(
            Arc::clone(&self.sftp),
            handle,
            path.to_owned(),
            size,
            self.read_chunk,
            self.io_timeout,
            Arc::clone(&self.lost),
        ))
    }
}
