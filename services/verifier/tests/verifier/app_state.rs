//! The application state of the manifest (Django's migrations): the
//! verifier finds the same state in the scratch restore, or fails the
//! backup saying which app differs. No Django needed: the table is made
//! by hand, as Django makes it.

use super::*;

/// A small source with a `django_migrations` table, and the manifest the
/// dumper would write for a plain gzip dump of it (application included).
fn django_source(rig: &Rig) -> (TestDatabase, PathBuf, String, Value) {
    let (source, _, _) = small_source(rig);
    source.execute(
        "CREATE TABLE django_migrations (id bigserial PRIMARY KEY, app varchar(255) NOT NULL,
                                         name varchar(255) NOT NULL, applied timestamptz NOT NULL);
         INSERT INTO django_migrations (app, name, applied) VALUES
           ('contenttypes', '0001_initial', now() - interval '2 days'),
           ('grading', '0001_initial', now() - interval '2 days'),
           ('grading', '0002_score_comment', now() - interval '1 day');",
    );
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    let mut manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let django = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let target = PgTarget::from_url(&source.url()).unwrap();
        let client = target.connect("test").await.unwrap();
        backup_core::app_state::django_migrations(&client)
            .await
            .unwrap()
    });
    manifest["application"] = json!({ "version": "v1", "django": django });
    (source, file, name, manifest)
}

#[test]
fn the_restored_migration_state_must_be_the_manifests() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, _, manifest) = django_source(&rig);
    assert_eq!(
        manifest["application"]["django"]["apps"]["grading"],
        "0002_score_comment"
    );
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let checks = event["checks"].to_string();
    assert!(
        checks.contains("django migrations as in the manifest (grading 0002, 2 apps)"),
        "{event:#}"
    );
    rig.assert_no_scratch_left();

    // The same dump described as holding a later migration: not verified.
    let other = artifact_name(&source.name, "sql.gz");
    let other_file = rig.work.path().join(&other);
    std::fs::copy(&file, &other_file).unwrap();
    let mut claimed = manifest_for(Some(&source), &source.name, &other, &other_file);
    claimed["application"] = manifest["application"].clone();
    claimed["application"]["django"]["apps"]["grading"] = json!("0003_later");
    let backup_id = rig.ship(&source.name, &other_file, &claimed);
    let error = rig.expect_failure(&backup_id);
    assert_eq!(
        error,
        "integrity: django migrations: 1 difference(s) from the manifest, first grading: \
         0002_score_comment restored, 0003_later in the manifest"
    );
    rig.assert_no_scratch_left();
}
