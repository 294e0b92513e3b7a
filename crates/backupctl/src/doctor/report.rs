//! The doctor's report: every check in a fixed order, printed one line
//! each with the fix below a failure, or as one JSON document.

use backup_core::preflight::{Check, Verdict};
use serde::Serialize;

/// Every check, in a fixed order; `ok` when none failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == verdict).count()
    }

    /// One line per check (`PASS  name: detail`), the fix indented below a
    /// failure, and a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!(
                "{}  {}: {}\n",
                check.verdict.label(),
                check.name,
                check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        out.push_str(&format!(
            "doctor: {} passed, {} failed, {} skipped\n",
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_not_a_failure() {
        let report = Report::new(vec![
            Check::pass("a", "fine"),
            Check::skip("b", "not configured"),
        ]);
        assert!(report.ok);
        let report = Report::new(vec![Check::fail("c", "broken\nbadly").with_fix("mend it")]);
        assert!(!report.ok);
        let text = report.to_text();
        assert!(
            text.contains("FAIL  c: broken | badly\n      fix: mend it\n"),
            "{text}"
        );
        assert!(
            text.ends_with("doctor: 0 passed, 1 failed, 0 skipped\n"),
            "{text}"
        );
    }
}
