# Stand-ins for what surrounds the pipeline in production, for
# scripts/compose-test.sh only: Korrigo's PostgreSQL, the scratch server, the
# hosting account's SFTP server, a mail relay that keeps what it receives,
# and NATS. One image from Debian's own packages, so that it builds from a
# local Debian base without any registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
      postgresql-15 openssh-server nats-server python3-aiosmtpd wget tini; \
    rm -rf /var/lib/apt/lists/*; \
    rm -f /etc/ssh/ssh_host_*; \
    useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pg-backup; \
    install -d -m 1777 /var/lib/postgresql/data; \
    install -d -m 3777 /run/postgresql
COPY standin-postgres.sh standin-sftp.sh /usr/local/bin/
ENV PGHOST=/run/postgresql PGPORT=5432
ENTRYPOINT ["/usr/bin/tini", "--"]
