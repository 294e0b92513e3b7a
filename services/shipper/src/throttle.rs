//! Optional bandwidth limit (`SHIP_BANDWIDTH_LIMIT`): an `AsyncRead` that
//! hands out bytes no faster than a given rate. Shared hosting providers
//! throttle or ban accounts that saturate their link; limiting the reader
//! limits the upload, because the pipelined writer can only send what it
//! has read.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes the reader may get ahead of the schedule, so that a full SFTP
/// write (255 KiB) goes out in one piece instead of trickling.
const BURST: u64 = 256 * 1024;

/// A rate in bytes per second, parsed from `10MiB/s`, `500KB/s`, `1G`
/// (decimal `k`/`M`/`G` or binary `Ki`/`Mi`/`Gi`, optional `B` and `/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let error = || {
            format!("{text:?} is not a transfer rate; try 10MiB/s, 500KB/s or 2000000 (bytes/s)")
        };
        let trimmed = text.trim();
        let body = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
        let body = body.strip_suffix(['B', 'b']).unwrap_or(body);
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, unit) = body.split_at(split);
        let number: f64 = number.parse().map_err(|_| error())?;
        let multiplier: f64 = match unit.trim() {
            "" => 1.0,
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "Ki" | "KI" => 1024.0,
            "Mi" | "MI" => 1024.0 * 1024.0,
            "Gi" | "GI" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(error()),
        };
        let rate = (number * multiplier).round();
        if !rate.is_finite() || rate < 1024.0 {
            return Err(format!(
                "{text:?}: a bandwidth limit below 1 KiB/s would never finish a backup"
            ));
        }
        // Saturating float-to-int: absurdly large limits mean "no limit".
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Rate(rate as u64))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} B/s", self.0)
    }
}

/// Wraps a reader so that, from its first read on, it never yields more
/// than `rate × elapsed + BURST` bytes.
#[derive(Debug)]
pub struct Throttled<R> {
    inner: R,
    rate: Option<Rate>,
    started: Option<Instant>,
    read: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<R> Throttled<R> {
    /// `rate: None` passes everything through untouched.
    pub fn new(inner: R, rate: Option<Rate>) -> Throttled<R> {
        Throttled {
            inner,
            rate,
            started: None,
            read: 0,
            sleep: None,
        }
    }

    /// The reader it wraps.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// When the bytes read so far (minus the burst) are due, if that is in
    /// the future.
    fn not_before(&self, rate: Rate, started: Instant) -> Option<Instant> {
        let ahead = self.read.saturating_sub(BURST);
        #[allow(clippy::cast_precision_loss)]
        let due = started + Duration::from_secs_f64(ahead as f64 / rate.0 as f64);
        (due > Instant::now()).then_some(due)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttled<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(rate) = this.rate {
            let started = *this.started.get_or_insert_with(Instant::now);
            loop {
                if let Some(sleep) = this.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                }
                match this.not_before(rate, started) {
                    Some(due) => this.sleep = Some(Box::pin(tokio::time::sleep_until(due))),
                    None => break,
                }
            }
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if poll.is_ready() {
            this.read += (buf.filled().len() - before) as u64;
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn rates_parse_with_units() {
        let parse = |s: &str| s.parse::<Rate>().map(|r| r.0);
        assert_eq!(parse("10MiB/s"), Ok(10 * 1024 * 1024));
        assert_eq!(parse("500KB/s"), Ok(500_000));
        assert_eq!(parse("1.5M"), Ok(1_500_000));
        assert_eq!(parse("2000000"), Ok(2_000_000));
        assert_eq!(parse(" 4 Mi B/s "), Ok(4 * 1024 * 1024));
        assert!(parse("fast").is_err());
        assert!(parse("10 parsecs").is_err());
        assert!(parse("100B/s").is_err(), "too slow to be meant");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_follow_the_rate_after_the_burst() {
        let data = vec![7u8; 3 * 1024 * 1024];
        let rate = Rate(1024 * 1024);
        let mut reader = Throttled::new(&data[..], Some(rate));
        let started = Instant::now();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        // 3 MiB at 1 MiB/s with a 256 KiB head start: paused time makes
        // this exact, not a timing assertion on a real clock.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(2700), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(3100), "{elapsed:?}");

        let mut unlimited = Throttled::new(&data[..], None);
        let started = Instant::now();
        unlimited.read_to_end(&mut Vec::new()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
