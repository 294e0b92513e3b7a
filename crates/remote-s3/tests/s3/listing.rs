//! Listings: one level under a prefix, names relative to it; databases
//! under the destination's prefix; details from `head`.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn lists_one_level_and_the_databases_under_the_prefix() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let remote = remote(&moto, BUCKET);
    for (db, name) in [
        ("viatique", "a.sql.gz"),
        ("viatique", "a.sql.gz.manifest.json"),
        ("korrigo", "b.sql.gz"),
    ] {
        remote
            .put_small(&remote.key(db, name), name.as_bytes())
            .await
            .unwrap();
    }
    // Outside the prefix, and one level deeper: neither is listed.
    moto.python(&format!(
        "s3.put_object(Bucket={BUCKET:?}, Key='other/x', Body=b'x')\n\
         s3.put_object(Bucket={BUCKET:?}, Key='prod/viatique/deeper/y', Body=b'y')"
    ));
    assert_eq!(
        remote.list_databases().await.unwrap(),
        ["korrigo", "viatique"]
    );
    let listed = remote.list(&remote.dir_key("viatique")).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a.sql.gz", "a.sql.gz.manifest.json"]);
    assert_eq!(listed[0].size, 8);
    assert!(listed[0].modified.is_some());
    let detailed = remote.list_detailed("prod/viatique/").await.unwrap();
    assert_eq!(detailed[0].sha256, Some(sha256_hex(b"a.sql.gz")));
    assert!(
        remote
            .list(&remote.dir_key("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        remote.describe(),
        format!("s3://{BUCKET}/prod at 127.0.0.1:{}", moto.port)
    );
}
