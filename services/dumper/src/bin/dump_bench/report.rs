//! The figures of one invocation as Markdown: every row's median time,
//! size and upload times at 100 Mbit/s and 1 Gbit/s, then the targets with
//! `yes` or `NO`, then the gzip levels that would meet the default's goals.
//! Pure formatting: nothing here runs or retries anything.

use std::fmt::Write as _;

use anyhow::Context;
use dumper::compress::DEFAULT_GZIP_LEVEL;

/// The default's goals (issue 21): a dump stage at most this many times
/// `pg_dump > /dev/null`...
const DEFAULT_TIME_GOAL: f64 = 1.5;
/// ...and an artifact at most this many percent larger than `pigz -6`.
const DEFAULT_SIZE_GOAL_PCT: f64 = 5.0;

/// Link rates the upload columns assume, in bits per second: the payload
/// at line rate, an upper bound for a real link.
const LINKS: [(&str, f64); 2] = [("100 Mbit/s", 100e6), ("1 Gbit/s", 1e9)];

/// What a row runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `pg_dump > /dev/null`: the limit for a logical dump.
    DevNull,
    /// `pg_dump | <filter> > file`.
    Filter(String),
    /// The dumper's stage with this codec (`default` or `gzip:N`, `zstd:N`).
    Dumper(String),
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) seconds: f64,
    pub(crate) size_bytes: u64,
    pub(crate) peak_rss_kib: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    runs: Vec<Run>,
}

impl Row {
    pub(crate) fn new(kind: Kind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            runs: Vec::new(),
        }
    }

    pub(crate) fn record(&mut self, run: Run) {
        self.runs.push(run);
    }

    fn median_seconds(&self) -> f64 {
        let mut times: Vec<f64> = self.runs.iter().map(|r| r.seconds).collect();
        times.sort_by(f64::total_cmp);
        let n = times.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => times[n / 2],
            _ => (times[n / 2 - 1] + times[n / 2]) / 2.0,
        }
    }

    fn range(&self) -> (f64, f64) {
        self.runs
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
                (lo.min(r.seconds), hi.max(r.seconds))
            })
    }

    /// The artifact's size (the same every run); the plain dump for
    /// `pg_dump > /dev/null`.
    fn size(&self, plain_bytes: u64) -> u64 {
        match self.kind {
            Kind::DevNull => plain_bytes,
            _ => self.runs.last().map_or(0, |r| r.size_bytes),
        }
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        self.runs.iter().filter_map(|r| r.peak_rss_kib).max()
    }
}

fn upload_seconds(bytes: u64, bits_per_second: f64) -> f64 {
    bytes as f64 * 8.0 / bits_per_second
}

/// The report: header, figures, targets, and the levels fit for default.
pub(crate) fn render(header: &str, rows: &[Row], plain_bytes: u64) -> anyhow::Result<String> {
    let find = |kind: Kind| rows.iter().find(|r| r.kind == kind);
    let dev_null = find(Kind::DevNull).context("no pg_dump > /dev/null row")?;
    let pigz6 = rows
        .iter()
        .find(|r| r.name == "pg_dump | pigz -6")
        .context("no pigz -6 row")?;
    let base_seconds = dev_null.median_seconds();
    let pigz6_bytes = pigz6.size(plain_bytes) as f64;
    let time_ratio = |row: &Row| row.median_seconds() / base_seconds;
    let larger_pct = |row: &Row| (row.size(plain_bytes) as f64 / pigz6_bytes - 1.0) * 100.0;

    let mut out = format!("{header}\n\n");
    out.push_str(
        "| pipeline | seconds | min–max | MiB | of plain | × pg_dump > /dev/null | vs pigz -6 \
         | upload 100 Mbit/s | upload 1 Gbit/s | dump + upload 100 Mbit/s | peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let size = row.size(plain_bytes);
        let (lo, hi) = row.range();
        let seconds = row.median_seconds();
        let slow = upload_seconds(size, LINKS[0].1);
        let fast = upload_seconds(size, LINKS[1].1);
        let _ = writeln!(
            out,
            "| {} | {seconds:.2} | {lo:.2}–{hi:.2} | {:.1} | {:.3} | {:.2} | {:+.1} % | {slow:.1} s | {fast:.1} s | {:.1} s | {} |",
            row.name.replace('|', "\\|"),
            size as f64 / 1048576.0,
            size as f64 / plain_bytes.max(1) as f64,
            time_ratio(row),
            larger_pct(row),
            seconds + slow,
            row.peak_rss_kib()
                .map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
    }
    let _ = writeln!(
        out,
        "\nUpload columns: the size at the full {} and {} line rate (no protocol overhead).",
        LINKS[0].0, LINKS[1].0
    );

    out.push_str("\n| target | measured | goal | met |\n|---|---:|---:|---|\n");
    let mut check = |what: &str, value: f64, goal: f64| {
        let _ = writeln!(
            out,
            "| {what} | {value:.3} | ≤ {goal} | {} |",
            if value <= goal { "yes" } else { "NO" }
        );
    };
    if let Some(default) = find(Kind::Dumper("default".into())) {
        check(
            "default dump stage / pg_dump > /dev/null",
            time_ratio(default),
            DEFAULT_TIME_GOAL,
        );
        // Larger is what matters: a smaller artifact is no regression.
        check(
            "default artifact vs pigz -6 (% larger)",
            larger_pct(default),
            DEFAULT_SIZE_GOAL_PCT,
        );
    }
    let by_name = |name: &str| rows.iter().find(|r| r.name == name);
    if let Some(gzip6) = by_name("dumper gzip:6") {
        check(
            "gzip:6 time / pigz -6 time",
            gzip6.median_seconds() / pigz6.median_seconds(),
            1.1,
        );
        check("gzip:6 size vs pigz -6 (% larger)", larger_pct(gzip6), 2.0);
        if let Some(gzip9) = by_name("pg_dump | gzip -9") {
            check(
                "gzip:6 time / gzip -9 time",
                gzip6.median_seconds() / gzip9.median_seconds(),
                0.45,
            );
        }
    }
    if let (Some(zstd), Some(cli)) = (by_name("dumper zstd:3"), by_name("pg_dump | zstd -T0 -3")) {
        check(
            "zstd:3 time / zstd -T0 -3 time",
            zstd.median_seconds() / cli.median_seconds(),
            1.1,
        );
        check(
            "zstd:3 size vs zstd -T0 -3 (% larger)",
            (zstd.size(plain_bytes) as f64 / cli.size(plain_bytes) as f64 - 1.0) * 100.0,
            2.0,
        );
    }
    let rss = rows.iter().filter_map(Row::peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    check("dumper peak RSS MiB (every level)", rss, 64.0);

    let gzip_levels: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(&r.kind, Kind::Dumper(codec) if codec.starts_with("gzip:")))
        .collect();
    let fit: Vec<&str> = gzip_levels
        .iter()
        .filter(|r| time_ratio(r) <= DEFAULT_TIME_GOAL && larger_pct(r) <= DEFAULT_SIZE_GOAL_PCT)
        .map(|r| codec_of(r))
        .collect();
    let _ = write!(
        out,
        "\ngzip levels within {DEFAULT_TIME_GOAL}× pg_dump > /dev/null and +{DEFAULT_SIZE_GOAL_PCT} % of pigz -6 in this run: {}",
        if fit.is_empty() {
            "none".into()
        } else {
            fit.join(", ")
        }
    );
    let fastest_small = gzip_levels
        .iter()
        .filter(|r| larger_pct(r) <= DEFAULT_SIZE_GOAL_PCT)
        .min_by(|a, b| time_ratio(a).total_cmp(&time_ratio(b)));
    if let Some(row) = fastest_small {
        let _ = write!(
            out,
            "; fastest within the size goal: {} ({:.2}×, {:+.1} %)",
            codec_of(row),
            time_ratio(row),
            larger_pct(row)
        );
    }
    let _ = writeln!(out, "; the default is gzip:{DEFAULT_GZIP_LEVEL}.");
    Ok(out)
}

fn codec_of(row: &Row) -> &str {
    match &row.kind {
        Kind::Dumper(codec) => codec,
        _ => &row.name,
    }
}
