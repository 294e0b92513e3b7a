//! End-to-end tests of the whole pipeline live in `tests/pipeline.rs`: they
//! build the binaries, start each service as its own process against real
//! NATS, PostgreSQL, OpenSSH sshd and SMTP servers, and check what arrives
//! on the remote. This library is intentionally empty.
