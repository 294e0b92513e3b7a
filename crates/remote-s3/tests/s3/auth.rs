//! Refusals: wrong credentials (moto with IAM authentication on), a
//! missing bucket, an endpoint that does not answer. Each is one line
//! naming the variable to fix, and nothing is written.

use remote_s3::S3Error;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_a_one_line_permanent_error_and_nothing_is_written() {
    let mut moto = MotoServer::start_authenticated();
    moto.create_bucket(BUCKET, false);
    let good = remote(&moto, BUCKET);
    good.put_small(&good.key("viatique", "probe"), b"ok")
        .await
        .unwrap();
    good.delete(&good.key("viatique", "probe")).await.unwrap();

    let data = pseudo_random(12_000_000, 6);
    let unknown_key = {
        let mut s = settings(&moto, BUCKET);
        s.access_key_id = "AKIAUNKNOWN000000000".into();
        S3Remote::connect(&s).unwrap()
    };
    let wrong_secret = {
        let mut s = settings(&moto, BUCKET);
        s.secret_access_key = SecretString::from("not-the-secret");
        S3Remote::connect(&s).unwrap()
    };
    for (remote, code) in [
        (&unknown_key, "InvalidAccessKeyId"),
        (&wrong_secret, "SignatureDoesNotMatch"),
    ] {
        for len in [data.len(), 1000] {
            let key = remote.key("viatique", &format!("refused-{len}"));
            let error = remote
                .upload(
                    &key,
                    &data[..len],
                    len as u64,
                    &sha256_hex(&data[..len]),
                    &|_| {},
                )
                .await
                .unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, S3Error::Credentials { .. }), "{text}");
            assert!(!error.is_transient(), "{text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(
                text.contains("S3_ACCESS_KEY_ID") && text.contains("S3_SECRET_ACCESS_KEY"),
                "{text}"
            );
            assert!(text.contains(code), "{text}");
            assert!(!text.contains("not-the-secret"), "{text}");
        }
        // HEAD answers carry no error code: the message still names both.
        let error = remote.head(&remote.key("viatique", "x")).await.unwrap_err();
        assert!(
            error.to_string().contains("S3_SECRET_ACCESS_KEY"),
            "{error}"
        );
        assert!(!error.is_transient());
    }
    assert!(keys_in(&moto, BUCKET).is_empty());
    assert_eq!(open_uploads(&moto, BUCKET), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_names_s3_bucket_and_a_dead_endpoint_is_transient() {
    let moto = MotoServer::start();
    let remote = remote(&moto, "no-such-bucket");
    let error = remote
        .put_small(&remote.key("viatique", "x"), b"x")
        .await
        .unwrap_err();
    assert!(matches!(error, S3Error::NoSuchBucket { .. }), "{error}");
    assert!(error.to_string().contains("S3_BUCKET"), "{error}");
    assert!(!error.is_transient());

    let port = test_support::PortReservation::new();
    let mut dead = S3Settings::new(
        Some(format!("http://127.0.0.1:{}", port.port())),
        BUCKET,
        "k",
        SecretString::from("s"),
    );
    dead.connect_timeout = std::time::Duration::from_secs(2);
    let dead = S3Remote::connect(&dead).unwrap();
    let error = dead.put_small("x", b"x").await.unwrap_err();
    assert!(matches!(error, S3Error::Unreachable { .. }), "{error}");
    assert!(error.is_transient());
    let text = error.to_string();
    assert!(
        text.contains("S3_ENDPOINT") && !text.contains('\n'),
        "{text}"
    );
}
