//! The operator documents cannot drift from the code.
//!
//! - Every ```sh or ```bash block of the setup guide and the runbook is
//!   preceded (on the nearest non-blank line above it) by
//!   `<!-- runs-in: PATH -->`, naming the repo-relative test file that
//!   extracts and runs it (that file must exist and mention the document's
//!   file name), or by `<!-- example: reason -->` for a block no test runs.
//! - Every upper-case setting name the documents show is read by a binary,
//!   and every variable a binary reads is named in a document, except the
//!   names of [`NOT_BINARY_SETTINGS`].
//! - The systemd units, their environment example and the setup guide agree
//!   on one configuration path, one user and one spool, and the timer's
//!   trigger refuses to run while the dumper's own schedule is on.
//!
//! The variables the binaries read are taken from their source (`env =
//! "NAME"` of the clap arguments, the secrets' `secret_from_env("NAME")`,
//! which also read `NAME_FILE`, and direct `env::var("NAME")`): `--help`
//! would miss the secrets, which are deliberately not flags.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use test_support::process::workspace_root;

/// The documents whose shell blocks must be marked.
const MARKED_DOCS: &[&str] = &[
    "docs/guides/backup-setup-guide.md",
    "docs/guides/docker-compose.md",
    "docs/runbooks/database-restore.md",
];

/// The documents that present settings to the operator.
const SETTINGS_DOCS: &[&str] = &[
    "README.md",
    "docs/guides/backup-setup-guide.md",
    "docs/guides/docker-compose.md",
    "docs/runbooks/database-restore.md",
    "docs/guides/doctor.md",
    "deploy/.env.example",
    "deploy/systemd/pipeline.env.example",
];

/// Where the binaries' source lives (test modules are skipped).
const SOURCE_DIRS: &[&str] = &[
    "crates/backup-core/src",
    "crates/backupctl/src",
    "crates/catalogue/src",
    "crates/remote-sftp/src",
    "crates/remote-s3/src",
    "crates/restore/src",
    "services/dumper/src",
    "services/shipper/src",
    "services/verifier/src",
    "services/pruner/src",
    "services/notifier/src",
];

/// Upper-case names that the documents show but no binary reads, or that a
/// binary reads without their being settings. Both directions of the check
/// ignore them. Add a name only under the group it belongs to.
const NOT_BINARY_SETTINGS: &[&str] = &[
    // Read by deploy/compose.yaml and deploy/scripts/*, not by a binary.
    "POSTGRES_DB",
    "POSTGRES_USER",
    "KORRIGO_NETWORK",
    "KORRIGO_MEDIA_VOLUME",
    "BACKUP_IMAGE",
    "BACKUP_PGUSER",
    "BACKUP_BUILD_IMAGE",
    "BACKUP_RUNTIME_IMAGE",
    "BACKUP_PG_CLIENT_SOURCE",
    "BACKUP_PREBUILT_DIR",
    "SCRATCH_DB_IMAGE",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "KORRIGO_COMPOSE",
    // libpq's own variables: pg_dump, psql and pg_restore read them from the
    // environment they inherit (the dumper adds its options to PGOPTIONS).
    "PGOPTIONS",
    // The operating system's login name, libpq's default role.
    "USER",
    // psql's own variable, and shell variables of the runbook's procedures.
    "ON_ERROR_STOP",
    "SSH_OPTS",
    "PROD_DB",
    "NEW_DB",
    "OLD_DB",
    // Read by the tracing-subscriber library (its EnvFilter), not by our code.
    "RUST_LOG",
    // scripts/demo.sh.
    "DEMO_KEEP_RUNNING",
    // The prose's placeholders: "a secret's file variable", the time in an
    // artifact's name.
    "NAME_FILE",
    "YYYYMMDD_HHMMSS",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One fenced code block: its opening line (1-based), its language and the
/// nearest non-blank line above it.
#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    first: String,
    above: String,
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut open = false;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        if open {
            open = false;
            continue;
        }
        open = true;
        let above = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or(String::new(), |l| l.trim().to_owned());
        blocks.push(Block {
            line: i + 1,
            lang: info.split_whitespace().next().unwrap_or("").to_owned(),
            first: lines.get(i + 1).map_or("", |l| l.trim()).to_owned(),
            above,
        });
    }
    blocks
}

/// What a block's marker line says, if it is one.
enum Marker {
    RunsIn(String),
    Example,
}

fn marker(line: &str) -> Option<Marker> {
    let inner = line.strip_prefix("<!--")?.strip_suffix("-->")?.trim();
    if let Some(rest) = inner.strip_prefix("runs-in:") {
        // `PATH`, optionally followed by what that test needs to find the
        // block (scripts/compose-test.sh takes `step=NAME`).
        let path = rest.split_whitespace().next().unwrap_or("");
        return (!path.is_empty()).then(|| Marker::RunsIn(path.to_owned()));
    }
    let reason = inner.strip_prefix("example:")?.trim();
    (!reason.is_empty()).then_some(Marker::Example)
}

/// The problems of one document's shell blocks, one line each.
fn block_problems(root: &Path, doc: &str) -> Vec<String> {
    let text = read(&root.join(doc));
    let file_name = Path::new(doc)
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let mut problems = Vec::new();
    for block in fenced_blocks(&text) {
        if block.lang != "sh" && block.lang != "bash" {
            continue;
        }
        let at = format!(
            "{doc}:{}: the ```{} block starting `{}`",
            block.line, block.lang, block.first
        );
        match marker(&block.above) {
            None => problems.push(format!(
                "{at} has no marker; on the line above it put `<!-- runs-in: PATH -->` \
                 (PATH: the repo-relative test file that extracts and runs it) or \
                 `<!-- example: why no test runs it -->`"
            )),
            Some(Marker::Example) => {}
            Some(Marker::RunsIn(path)) => match std::fs::read_to_string(root.join(&path)) {
                Err(_) => problems.push(format!(
                    "{at} says it runs in {path}, which does not exist; name the test file \
                     that runs it, or mark it `<!-- example: reason -->`"
                )),
                Ok(test) if !test.contains(&file_name) => problems.push(format!(
                    "{at} says it runs in {path}, which never mentions {file_name}; name the \
                     test file that extracts this block, or mark it `<!-- example: reason -->`"
                )),
                Ok(_) => {}
            },
        }
    }
    problems
}

#[test]
fn every_shell_block_of_the_guide_and_runbook_runs_in_a_test_or_is_an_example() {
    let root = workspace_root();
    let problems: Vec<String> = MARKED_DOCS
        .iter()
        .flat_map(|doc| block_problems(&root, doc))
        .collect();
    assert!(
        problems.is_empty(),
        "{} shell block(s) not accounted for:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself: an unmarked block, a marker naming a missing file
/// and one naming a file that never mentions the document all fail.
#[test]
fn the_block_check_refuses_unmarked_blocks_and_wrong_test_files() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("tests")).unwrap();
    std::fs::write(root.path().join("tests/runs.rs"), "// runs guide.md").unwrap();
    std::fs::write(root.path().join("tests/other.rs"), "// runs nothing").unwrap();
    std::fs::write(
        root.path().join("guide.md"),
        "# Guide\n\n<!-- runs-in: tests/runs.rs -->\n\n```bash\necho ok\n```\n\n\
         <!-- example: needs the real server -->\n```sh\nssh host\n```\n\n\
         ```text\nnot a shell block\n```\n\n```bash\nunmarked\n```\n\n\
         <!-- runs-in: tests/missing.rs -->\n```bash\nmissing\n```\n\n\
         <!-- runs-in: tests/other.rs -->\n   ```bash\n   other\n   ```\n\n\
         <!-- example: -->\n```bash\nno reason\n```\n",
    )
    .unwrap();
    let problems = block_problems(root.path(), "guide.md");
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].starts_with("guide.md:18: the ```bash block starting `unmarked` has no marker"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("`missing`") && problems[1].contains("does not exist"),
        "{problems:#?}"
    );
    assert!(
        problems[2].contains("`other`") && problems[2].contains("never mentions guide.md"),
        "{problems:#?}"
    );
    assert!(
        problems[3].contains("`no reason`") && problems[3].contains("no marker"),
        "{problems:#?}"
    );
}

/// Upper-case words of `text` that look like settings: with an underscore
/// (`BACKUP_TZ`; `ALERT_EMAIL_*` gives the prefix `ALERT_EMAIL_`) or libpq's
/// `PG...`. Each with the 1-based lines it appears on.
fn setting_words(text: &str) -> BTreeMap<String, Vec<usize>> {
    let mut words: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let word = word.trim_start_matches('_');
            let Some(first) = word.chars().next() else {
                continue;
            };
            let upper = word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            let settingish = word.trim_end_matches('_').contains('_')
                || (word.starts_with("PG") && word.len() > 3);
            if first.is_ascii_uppercase() && upper && settingish {
                words.entry(word.to_owned()).or_default().push(i + 1);
            }
        }
    }
    words
}

/// Every variable the binaries read, with the first file that reads it, and
/// the prefixes of variable families (`HEALTHCHECK_URL_<DATABASE>`).
struct ReadVariables {
    names: BTreeMap<String, String>,
    families: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literals that follow each occurrence of `call` in `code`.
fn literal_args<'a>(code: &'a str, call: &str) -> Vec<&'a str> {
    code.match_indices(call)
        .filter_map(|(at, _)| {
            let rest = &code[at + call.len()..];
            let end = rest.find('"')?;
            Some(&rest[..end])
        })
        .collect()
}

fn read_variables(root: &Path) -> ReadVariables {
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut names = BTreeMap::new();
    let mut families = BTreeSet::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.contains("test") {
            continue;
        }
        let text = read(&file);
        // Inline unit-test modules come last in a file; their variables are
        // the tests' own.
        let code = text
            .find("#[cfg(test)]\nmod tests {")
            .map_or(text.as_str(), |at| &text[..at]);
        let relative = file.strip_prefix(root).unwrap().display().to_string();
        let mut add = |name: &str| {
            names
                .entry(name.to_owned())
                .or_insert_with(|| relative.clone());
        };
        for n in literal_args(code, "env = \"") {
            if is_name(n) {
                add(n);
            }
        }
        for call in ["secret_from_env(\"", "required_secret(\""] {
            for n in literal_args(code, call) {
                if is_name(n) {
                    add(n);
                    add(&format!("{n}_FILE"));
                }
            }
        }
        for call in ["env::var(\"", "env::var_os(\""] {
            for n in literal_args(code, call) {
                if is_name(n) {
                    add(n);
                }
            }
        }
        // format!("HEALTHCHECK_URL_{}", ...): a family of variables.
        for n in literal_args(code, "format!(\"") {
            if let Some(prefix) = n.strip_suffix("{}")
                && prefix.ends_with('_')
                && is_name(prefix)
            {
                families.insert(prefix.to_owned());
            }
        }
    }
    ReadVariables { names, families }
}

#[test]
fn the_settings_the_docs_name_are_the_ones_the_binaries_read() {
    let root = workspace_root();
    let binaries = read_variables(&root);
    // The scan must keep seeing each kind of read, or it would pass on nothing.
    for (name, kind) in [
        ("BACKUP_SCHEDULE", "a clap argument"),
        ("SMTP_URL_FILE", "a secret's file variable"),
        ("SFTP_KEY_PASSPHRASE", "a secret"),
    ] {
        assert!(
            binaries.names.contains_key(name),
            "the source scan no longer finds {name} ({kind}); fix read_variables in {}",
            file!()
        );
    }
    assert!(
        binaries.families.contains("HEALTHCHECK_URL_"),
        "the source scan no longer finds HEALTHCHECK_URL_<DATABASE>"
    );
    let allowed: BTreeSet<&str> = NOT_BINARY_SETTINGS.iter().copied().collect();

    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut all_words = BTreeSet::new();
    for doc in SETTINGS_DOCS {
        let text = read(&root.join(doc));
        all_words.extend(
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_owned),
        );
        for (word, lines) in setting_words(&text) {
            named
                .entry(word)
                .or_default()
                .extend(lines.iter().map(|l| format!("{doc}:{l}")));
        }
    }

    let is_read = |word: &str| {
        if let Some(prefix) = word.strip_suffix('_') {
            // `ALERT_EMAIL_*`: some variable of that prefix is read.
            return binaries.names.keys().any(|n| n.starts_with(word))
                || binaries.families.contains(word)
                || allowed.contains(prefix);
        }
        binaries.names.contains_key(word)
            || binaries
                .families
                .iter()
                .any(|f| word.starts_with(f.as_str()))
    };
    let mut problems = Vec::new();
    for (word, places) in &named {
        if !allowed.contains(word.as_str()) && !is_read(word) {
            problems.push(format!(
                "{word} ({}) is named in the docs but no binary reads it: correct the name, or, \
                 if it is not a binary's setting (compose, libpq, a shell variable of a \
                 procedure), add it to NOT_BINARY_SETTINGS in {} under its group",
                places.join(", "),
                file!()
            ));
        }
    }
    for name in NOT_BINARY_SETTINGS {
        if !named.contains_key(*name) && !binaries.names.contains_key(*name) {
            problems.push(format!(
                "{name} is in NOT_BINARY_SETTINGS of {} but neither a document nor a binary \
                 names it any more: remove it from the list",
                file!()
            ));
        }
    }
    for (name, file) in &binaries.names {
        if allowed.contains(name.as_str()) || all_words.contains(name) {
            continue;
        }
        // A secret's NAME_FILE is covered by the docs' rule for secrets
        // once NAME itself is documented.
        if let Some(secret) = name.strip_suffix("_FILE")
            && all_words.contains(secret)
            && binaries.names.contains_key(secret)
        {
            continue;
        }
        problems.push(format!(
            "{name} is read by {file} but no document names it: describe it in the \
             table of that binary in docs/guides/backup-setup-guide.md (section 7 or 12), or, if \
             it is not a setting, add it to NOT_BINARY_SETTINGS in {} under its group",
            file!()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} setting name(s) out of step between the docs ({}) and the binaries:\n{}",
        problems.len(),
        SETTINGS_DOCS.join(", "),
        problems.join("\n")
    );
}

/// The word scan itself, on text shaped like the documents.
#[test]
fn setting_words_finds_settings_and_leaves_prose_alone() {
    let words = setting_words(
        "Set `BACKUP_TZ` and PGPASSWORD(_FILE); `ALERT_EMAIL_*`, HEALTHCHECK_URL_<DATABASE>.\n\
         ERROR lines, SHA256:abc, pg_read_all_data, verify_<hex>, PG, CREATE DATABASE\n\
         NATS_URL=nats://x\n",
    );
    let found: Vec<&str> = words.keys().map(String::as_str).collect();
    assert_eq!(
        found,
        [
            "ALERT_EMAIL_",
            "BACKUP_TZ",
            "HEALTHCHECK_URL_",
            "NATS_URL",
            "PGPASSWORD"
        ],
        "{words:?}"
    );
    assert_eq!(words["NATS_URL"], [3]);
}

/// The value of `Key=` in a unit file (the first one).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn systemd_units_env_example_and_guide_share_one_path_user_and_spool() {
    let root = workspace_root();
    let guide = read(&root.join("docs/guides/backup-setup-guide.md"));
    let env = read(&root.join("deploy/systemd/pipeline.env.example"));
    let config_dir = "/etc/korrigo-backup";
    let env_file = format!("{config_dir}/pipeline.env");
    let spool = env
        .lines()
        .find_map(|l| l.strip_prefix("BACKUP_SPOOL_DIR="))
        .expect("pipeline.env.example sets BACKUP_SPOOL_DIR");
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("deploy/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let unit = read(&path);
        if unit_value(&unit, "EnvironmentFile") != Some(env_file.as_str()) {
            problems.push(format!("{name}: EnvironmentFile is not {env_file}"));
        }
        for key in ["User", "Group"] {
            if unit_value(&unit, key) != Some("pg-backup") {
                problems.push(format!("{name}: {key} is not pg-backup"));
            }
        }
        for key in ["ReadWritePaths", "ReadOnlyPaths"] {
            if let Some(path) = unit_value(&unit, key)
                && path != spool
            {
                problems.push(format!(
                    "{name}: {key}={path}, but BACKUP_SPOOL_DIR={spool}"
                ));
            }
        }
    }
    for line in env
        .lines()
        .filter(|l| l.contains("_FILE=") || l.contains("_KNOWN_HOSTS=") || l.contains("KEY_FILE="))
    {
        let value = line.split_once('=').unwrap().1;
        if !value.starts_with(&format!("{config_dir}/")) {
            problems.push(format!(
                "pipeline.env.example: {line} is not under {config_dir}/"
            ));
        } else if !guide.contains(value) {
            problems.push(format!(
                "pipeline.env.example: {value} is not a file the setup guide creates"
            ));
        }
    }
    for needle in [env_file.as_str(), "pg-backup", spool, "BACKUP_SCHEDULE=off"] {
        if !guide.contains(needle) {
            problems.push(format!("the setup guide never mentions {needle}"));
        }
    }
    for stale in ["/etc/pg-backup", "/var/lib/pg-backup"] {
        if guide.contains(stale) || env.contains(stale) {
            problems.push(format!("{stale} is still named"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The trigger unit (run by the timer) refuses while the dumper's built-in
/// schedule is on, so that a night never gets two backups, and runs once
/// BACKUP_SCHEDULE is `off`. Its guard is run here as systemd would run it.
#[test]
fn the_timer_trigger_runs_only_when_the_built_in_schedule_is_off() {
    let root = workspace_root();
    let unit = read(&root.join("deploy/systemd/pg-backup-trigger.service"));
    let guard = unit_value(&unit, "ExecStartPre").expect("the trigger unit has a guard");
    let script = guard
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("the guard is /bin/sh -c '...'")
        // systemd's escape for a literal `$`.
        .replace("$$", "$");
    let run = |schedule: Option<&str>| {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(&script).env_remove("BACKUP_SCHEDULE");
        if let Some(value) = schedule {
            sh.env("BACKUP_SCHEDULE", value);
        }
        sh.output().expect("run /bin/sh")
    };
    for on in [None, Some(""), Some("0 2 * * *")] {
        let out = run(on);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("BACKUP_SCHEDULE=off"),
            "BACKUP_SCHEDULE={on:?}: the guard let the timer trigger a second backup: {stderr}"
        );
    }
    for off in ["off", "none"] {
        let out = run(Some(off));
        assert!(
            out.status.success(),
            "BACKUP_SCHEDULE={off}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The values the guard lets through are the ones the dumper reads as "no schedule".
    let dumper = read(&root.join("services/dumper/src/settings.rs"));
    assert!(
        dumper.contains(r#""" | "off" | "none" => None"#),
        "the dumper's spelling of a disabled schedule changed; update the guard in pg-backup-trigger.service"
    );
}

/// Section 13 of the setup guide, run as written in a scratch directory.
#[test]
fn setup_guide_age_key_block_prints_one_public_key() {
    let root = workspace_root();
    let guide = read(&root.join("docs/guides/backup-setup-guide.md"));
    let start = guide
        .find("\n## 13. ")
        .expect("section 13 (age) of backup-setup-guide.md");
    let section = &guide[start..];
    let open = section
        .find("```bash\n")
        .expect("a bash block in section 13")
        + "```bash\n".len();
    let block = &section[open..open + section[open..].find("\n```").expect("closed block")];
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(block)
        .current_dir(work.path())
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{block}\n{text}");
    let keys: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.starts_with("age1"))
        .collect();
    assert_eq!(keys.len(), 2, "{text}");
    assert_eq!(keys[0], keys[1], "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.path().join("korrigo-backup.agekey"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the private key is readable by others");
}
