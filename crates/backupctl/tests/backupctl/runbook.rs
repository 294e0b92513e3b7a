//! The by-hand procedures of `docs/runbooks/database-restore.md`,
//! extracted from the document and run with bash.

use super::*;

/// The ```bash blocks of the runbook section that starts with `heading`
/// (`## 3.` or `### 5.1`, up to the next heading of the same or a higher
/// level), in order: those marked `runs-in` this file (or the Django round
/// trip's, `django.rs`); the others must be marked `example`.
pub(super) fn runbook_blocks(heading: &str) -> Vec<String> {
    let path = test_support::process::workspace_root().join("docs/runbooks/database-restore.md");
    let text = std::fs::read_to_string(&path).expect("read the runbook");
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no {heading:?} in the runbook"));
    let section = &text[start + 1..];
    let mut end = section.len();
    let mut offset = 0;
    for line in section.split_inclusive('\n') {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if offset > 0 && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = offset;
            break;
        }
        offset += line.len();
    }
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```bash\n") {
        let marker = rest[..open]
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .trim();
        let body = &rest[open + "```bash\n".len()..];
        let close = body.find("\n```").expect("unclosed code block");
        let runs_here = marker
            .strip_prefix("<!-- runs-in: crates/backupctl/tests/backupctl/")
            .and_then(|rest| rest.strip_suffix(".rs -->"))
            .is_some_and(|module| ["runbook", "django"].contains(&module));
        if runs_here {
            blocks.push(body[..close].to_owned());
        } else {
            assert!(
                marker.starts_with("<!-- example: "),
                "a block of {heading:?} is marked neither runs-in nor example: {marker:?}"
            );
        }
        rest = &body[close + 4..];
    }
    blocks
}

/// Section 0's shell settings (`SSH_OPTS`, `pipefail`), taken from the
/// runbook; the site values (`export SFTP_...`) are the test's.
fn runbook_setup() -> String {
    let setup = runbook_blocks("## 0.")
        .concat()
        .lines()
        .filter(|l| l.starts_with("SSH_OPTS=") || l.starts_with("set -o pipefail"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        setup.contains("SSH_OPTS="),
        "section 0 no longer sets SSH_OPTS"
    );
    setup
}

/// What a runbook script printed, and the database it restored into (the
/// `TARGET` it names), dropped with the test.
pub(super) struct RunbookRun {
    pub(super) out: Output,
    pub(super) stdout: String,
    pub(super) report: String,
    pub(super) target: Option<TestDatabase>,
}

/// Runs `blocks` with bash in a fresh directory, after `vars` (the test's
/// values) and section 0's settings, against the rig's sshd; backupctl is
/// on the PATH.
pub(super) fn run_runbook(
    rig: &Rig,
    vars: &str,
    blocks: &[String],
    env: &[(String, String)],
) -> RunbookRun {
    let work = tempfile::tempdir().expect("work dir");
    let script = format!(
        "{vars}\n{}\ncd '{}'\n{}\necho \"TARGET=$TARGET\"\n",
        runbook_setup(),
        work.path().display(),
        blocks.join("\n")
    );
    let bin_dir = workspace_bin("backupctl")
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .envs(rig.env())
        .envs(test_support::postgres::pg_env())
        .envs(env.iter().cloned())
        .env("PATH", path)
        .env_remove("BACKUP_TZ")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let target_name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TARGET="))
        .unwrap_or_default()
        .to_owned();
    let target = (!target_name.is_empty()).then(|| TestDatabase { name: target_name });
    let report = format!("{}\nscript:\n{script}", text(&out));
    RunbookRun {
        out,
        stdout,
        report,
        target,
    }
}

/// Creates the role the runbook restores as (Korrigo's owner role).
fn create_viatique_user() {
    admin_sql(
        "DO $$ BEGIN CREATE ROLE viatique_user; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
}

/// The row-count check of 3.4 said OK for every table of the manifest.
fn assert_counts_ok(run: &RunbookRun) {
    assert!(!run.stdout.contains("MISMATCH"), "{}", run.report);
    for table in expected_tables().keys() {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("OK") && l.contains(table.as_str())),
            "no OK line for {table}: {}",
            run.report
        );
    }
    assert!(
        run.stdout.contains("tables in the manifest: 3"),
        "{}",
        run.report
    );
}

/// Sections 1 to 3 of the runbook (find, choose, restore by hand),
/// extracted from the document and run with bash against real backups on a
/// real sshd, so the document cannot rot: the selection picks the newest
/// verified backup, then the newest before a moment, lists the pre-deploy
/// one, and the restore of 3.3 and the checks of 3.2 and 3.4 pass.
#[test]
fn runbook_sections_1_to_3_choose_and_restore_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let kind = ArtifactKind::PLAIN_GZIP;
    let old = rig.publish_tagged(&source, &database, at(300), kind, true, Some("pre-deploy"));
    let newest_verified = rig.publish_backup(&source, &database, at(200), kind, true);
    rig.publish_backup(&source, &database, at(100), kind, false);
    create_viatique_user();

    let mut blocks = runbook_blocks("## 1.");
    blocks.extend(runbook_blocks("## 2."));
    assert!(
        blocks.len() >= 6,
        "sections 1 and 2 lost commands: {blocks:?}"
    );
    let before = at(250).format("%Y%m%d_%H%M%S").to_string();
    let mut replaced = false;
    for block in &mut blocks {
        if block.contains("BEFORE=20261121_224300") {
            *block = block.replace("BEFORE=20261121_224300", &format!("BEFORE={before}"));
            replaced = true;
        }
    }
    assert!(replaced, "section 2 no longer sets BEFORE");
    let section_3 = runbook_blocks("## 3.");
    assert!(
        section_3.len() >= 4,
        "section 3 lost its commands: {section_3:?}"
    );
    blocks.extend(section_3);
    let run = run_runbook(&rig, &format!("DB={database}"), &blocks, &[]);
    assert!(run.out.status.success(), "{}", run.report);
    let chosen: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ARTIFACT="))
        .collect();
    assert_eq!(
        chosen,
        [newest_verified.as_str(), old.as_str()],
        "newest verified, then newest verified before {before}: {}",
        run.report
    );
    assert!(
        run.stdout.lines().any(|l| l == old.as_str()),
        "the pre-deploy listing: {}",
        run.report
    );
    assert!(
        run.stdout.contains(&format!("{old}: OK")),
        "sha256sum -c: {}",
        run.report
    );
    assert!(run.stdout.contains("gzip OK"), "{}", run.report);
    assert!(run.stdout.contains("psql exit status: 0"), "{}", run.report);
    assert_counts_ok(&run);
    assert!(run.stdout.contains("tables restored: 3"), "{}", run.report);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.1: a custom-format archive, downloaded and checked with 3.1 and 3.2,
/// restored with pg_restore, counted with 3.4.
#[test]
fn runbook_section_5_1_restores_a_custom_format_archive_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), CUSTOM_GZIP, true);
    let mut blocks = runbook_blocks("### 3.1");
    blocks.extend(runbook_blocks("### 3.2"));
    blocks.extend(runbook_blocks("### 5.1"));
    blocks.extend(runbook_blocks("### 3.4"));
    let run = run_runbook(
        &rig,
        &format!("DB={database}\nARTIFACT={artifact}"),
        &blocks,
        &[],
    );
    assert!(run.out.status.success(), "{}", run.report);
    assert!(
        run.stdout.contains(&format!("{artifact}: OK")),
        "{}",
        run.report
    );
    assert!(
        run.stdout.contains("pg_restore exit status: 0"),
        "{}",
        run.report
    );
    assert_counts_ok(&run);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.2: an age-encrypted plain dump, decrypted as a stream into psql.
#[test]
fn runbook_section_5_2_restores_an_encrypted_artifact_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let kind = ArtifactKind {
        encrypted: true,
        ..ArtifactKind::PLAIN_GZIP
    };
    let artifact = rig.publish_backup(&source, &database, at(60), kind, true);
    let mut blocks = runbook_blocks("### 3.1");
    blocks.extend(runbook_blocks("### 5.2"));
    blocks.extend(runbook_blocks("### 3.4"));
    let identity = rig.age_identity().display().to_string();
    let run = run_runbook(
        &rig,
        &format!("DB={database}\nARTIFACT={artifact}"),
        &blocks,
        &[("AGE_IDENTITY_FILE".to_owned(), identity)],
    );
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("psql exit status: 0"), "{}", run.report);
    assert_counts_ok(&run);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.3: the globals backup (`pg_dumpall --globals-only` of the shared
/// server) restored into a fresh private server: a role that exists only
/// in the backup exists there afterwards, with its attributes.
#[test]
fn runbook_section_5_3_restores_roles_from_the_globals_backup() {
    let roles = AppRoles::create();
    admin_sql(&format!("ALTER ROLE {} CREATEDB", roles.owner));
    let rig = Rig::start();
    let globals = DatabaseName::try_from("globals".to_owned()).expect("name");
    let kind = ArtifactKind {
        format: DumpFormat::Globals,
        ..ArtifactKind::PLAIN_GZIP
    };
    rig.publish_artifact(
        &globals,
        at(60),
        kind,
        "pg_dumpall --globals-only --no-password",
        &test_support::postgres::pg_env(),
        &BTreeMap::new(),
        true,
        None,
    );
    let fresh = test_support::pg_cluster::PostgresCluster::start();
    let blocks = runbook_blocks("### 5.3");
    assert!(blocks.len() >= 2, "5.3 lost its commands: {blocks:?}");
    let run = run_runbook(&rig, "DB=unused", &blocks, &fresh.env());
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("globals OK"), "{}", run.report);
    assert_eq!(
        fresh.query(
            "postgres",
            &format!(
                "SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = '{}'",
                roles.owner
            )
        ),
        "t",
        "{}",
        run.report
    );
}

/// 5.4: the media archive extracted by hand gives back every file.
#[test]
fn runbook_section_5_4_extracts_the_media_archive() {
    let rig = Rig::start();
    let media_root = tempfile::tempdir().expect("media dir");
    let media = media_root.path().join("media");
    std::fs::create_dir_all(media.join("copies/2026")).expect("mkdir");
    std::fs::write(media.join("copies/2026/scan 1.pdf"), b"%PDF-1.4 scan").expect("write");
    std::fs::write(media.join("logo.png"), [0x89, b'P', b'N', b'G']).expect("write");
    let name = DatabaseName::try_from("media".to_owned()).expect("name");
    let kind = ArtifactKind {
        format: DumpFormat::Tar,
        ..ArtifactKind::PLAIN_GZIP
    };
    rig.publish_artifact(
        &name,
        at(60),
        kind,
        &format!("tar -C '{}' -cf - media", media_root.path().display()),
        &[],
        &BTreeMap::new(),
        true,
        None,
    );
    let run = run_runbook(&rig, "DB=unused", &runbook_blocks("### 5.4"), &[]);
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("media OK"), "{}", run.report);
    assert!(
        run.stdout
            .contains("media-restore/media/copies/2026/scan 1.pdf"),
        "{}",
        run.report
    );
}
