//! An emulated WAN between the tests and an SFTP server: the test sshd runs
//! in its own network namespace, reached over a veth pair whose two ends
//! are rate-limited with `tc tbf` (both directions), through a
//! [`DelayProxy`] on the host side that adds the latency, with random
//! packet loss inside the namespace from an nftables `numgen random` rule.
//!
//! ```text
//! client ── 127.0.0.1:proxy ── DelayProxy (one-way delay each way)
//!        ── veth (tbf rate) ══ namespace: veth (tbf rate, nft loss) ── sshd
//! ```
//!
//! The kernel this was written on has no `netem`, hence the proxy for the
//! latency (see [`crate::delay_proxy`] for what that changes). When the
//! kernel refuses the nftables rule, loss is not emulated and
//! [`EmulatedWan::loss_emulated`] says so (a warning goes to stderr).
//! Needs root and `ip`, `tc`, `nft` (Debian `iproute2`, `nftables`); a
//! missing piece fails the test loudly, never skips it. Namespace and
//! interface names are unique per instance and everything is removed on
//! drop. Nothing here retries.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use remote_sftp::SftpSettings;
use tempfile::TempDir;

use crate::delay_proxy::DelayProxy;
use crate::sftp_peers::SftpEndpoint;
use crate::sshd::Sshd;

/// The link to emulate.
#[derive(Debug, Clone, Copy)]
pub struct WanSpec {
    /// Rate limit of each direction, in Mbit/s (10^6 bits).
    pub rate_mbit: u32,
    /// Round trip added by the proxy (half each way).
    pub round_trip: Duration,
    /// Packets dropped per thousand, each direction.
    pub loss_per_mille: u32,
}

impl WanSpec {
    /// The link of a hosting provider's uplink in issue 21: 100 Mbit/s,
    /// 40 ms round trip, 0.1 % loss.
    pub const HOSTED: WanSpec = WanSpec {
        rate_mbit: 100,
        round_trip: Duration::from_millis(40),
        loss_per_mille: 1,
    };

    /// Bytes per second of the rate limit.
    pub fn bytes_per_second(&self) -> f64 {
        f64::from(self.rate_mbit) * 1e6 / 8.0
    }
}

/// A test sshd behind an emulated WAN (see the module docs). Fields drop
/// in order: the proxy, then sshd, then the namespace.
#[derive(Debug)]
pub struct EmulatedWan {
    pub proxy: DelayProxy,
    pub sshd: Sshd,
    pub spec: WanSpec,
    /// Whether the nftables loss rule is in place.
    pub loss_emulated: bool,
    files: TempDir,
    netns: Netns,
}

impl EmulatedWan {
    /// Builds the namespace and link, starts sshd in it and the proxy in
    /// front. Panics with the failing command when anything is missing.
    pub fn start(spec: WanSpec) -> EmulatedWan {
        let netns = Netns::create();
        netns.limit_rate(spec.rate_mbit);
        let loss_emulated = spec.loss_per_mille == 0 || netns.drop_randomly(spec.loss_per_mille);
        let sshd = Sshd::start_in_netns(&netns.name, netns.inside);
        let proxy = DelayProxy::start(
            SocketAddr::from((netns.inside, sshd.port)),
            spec.round_trip / 2,
        );
        let files = tempfile::Builder::new()
            .prefix("wan-")
            .tempdir()
            .expect("create wan temp dir");
        let wan = EmulatedWan {
            proxy,
            sshd,
            spec,
            loss_emulated,
            files,
            netns,
        };
        fs::write(
            wan.known_hosts(),
            format!(
                "[127.0.0.1]:{} {}\n",
                wan.proxy.port,
                wan.sshd.host_public_key()
            ),
        )
        .expect("write known_hosts of the proxy");
        wan
    }

    /// Name of the network namespace sshd runs in.
    pub fn netns(&self) -> &str {
        &self.netns.name
    }

    /// known_hosts naming the proxy's address with sshd's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.files.path().join("known_hosts")
    }

    /// SFTP settings through the link, as [`crate::pipeline::sftp_settings`]
    /// gives them for a loopback sshd.
    pub fn sftp_settings(&self) -> SftpSettings {
        let mut settings = crate::pipeline::sftp_settings(&self.sshd);
        settings.port = self.proxy.port;
        settings.known_hosts = Some(self.known_hosts());
        settings
    }

    /// The `SFTP_*` environment of a pipeline binary going through the
    /// link, with `dir` as `SFTP_DIR`.
    pub fn sftp_env(&self, dir: &Path) -> Vec<(String, String)> {
        self.sshd
            .sftp_env(dir)
            .into_iter()
            .map(|(key, value)| match key.as_str() {
                "SFTP_PORT" => (key, self.proxy.port.to_string()),
                "SFTP_KNOWN_HOSTS" => (key, self.known_hosts().display().to_string()),
                _ => (key, value),
            })
            .collect()
    }

    /// The server as OpenSSH's `sftp` and rclone reach it: via the proxy.
    pub fn endpoint(&self) -> SftpEndpoint {
        SftpEndpoint {
            port: self.proxy.port,
            known_hosts: self.known_hosts(),
            ..SftpEndpoint::of(&self.sshd)
        }
    }
}

/// A network namespace with a veth pair to the host: `outside` on the host
/// end, `inside` on the namespace's. Deleted on drop (which deletes the
/// pair).
#[derive(Debug)]
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    outside: Ipv4Addr,
    inside: Ipv4Addr,
}

impl Netns {
    fn create() -> Netns {
        let tag = format!("{:08x}", rand::random::<u32>());
        let free = free_subnet();
        let netns = Netns {
            name: format!("bkwan-{tag}"),
            host_if: format!("wh{tag}"),
            ns_if: format!("wn{tag}"),
            outside: free,
            inside: Ipv4Addr::from(u32::from(free) + 1),
        };
        // From here on Drop cleans up whatever was made.
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &netns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &netns.ns_if,
        ]);
        ip(&["link", "set", &netns.ns_if, "netns", &netns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", netns.outside),
            "dev",
            &netns.host_if,
        ]);
        ip(&["link", "set", &netns.host_if, "up"]);
        netns.exec(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", netns.inside),
                "dev",
                &netns.ns_if,
            ],
        );
        netns.exec("ip", &["link", "set", &netns.ns_if, "up"]);
        netns.exec("ip", &["link", "set", "lo", "up"]);
        netns
    }

    /// `tc tbf` at `mbit` on both ends' egress. The burst is above the
    /// 64 KiB segments veth hands over with GSO, so they are not dropped.
    fn limit_rate(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        let tbf = [
            "qdisc", "replace", "dev", "", "root", "tbf", "rate", &rate, "burst", "128kb",
            "latency", "100ms",
        ];
        let mut host = tbf;
        host[3] = self.host_if.as_str();
        run(Command::new("tc").args(host));
        let mut inside = tbf;
        inside[3] = self.ns_if.as_str();
        self.exec("tc", &inside);
    }

    /// Drops `per_mille` of the packets crossing the namespace's end of
    /// the link, each way. False (with a warning) when the kernel refuses.
    fn drop_randomly(&self, per_mille: u32) -> bool {
        assert!(
            Command::new("nft").arg("--version").output().is_ok(),
            "nft is missing: apt-get install -y nftables (scripts/install-deps.sh)"
        );
        let ruleset = format!(
            "table inet wanloss {{\n\
               chain input {{ type filter hook input priority 0; iifname \"{ns_if}\" numgen random mod 1000 < {per_mille} drop; }}\n\
               chain output {{ type filter hook output priority 0; oifname \"{ns_if}\" numgen random mod 1000 < {per_mille} drop; }}\n\
             }}\n",
            ns_if = self.ns_if,
        );
        let file = std::env::temp_dir().join(format!("{}.nft", self.name));
        fs::write(&file, ruleset).expect("write nft ruleset");
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f"])
            .arg(&file)
            .output()
            .expect("run nft");
        let _ = fs::remove_file(&file);
        if output.status.success() {
            return true;
        }
        eprintln!(
            "WARNING: packet loss is NOT emulated, the kernel refused the nftables rule: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        false
    }

    fn exec(&self, program: &str, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and so the pair; the
        // explicit delete covers a namespace that was never populated.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// The first address of a /30 in 10.128.0.0/10 that no interface uses.
fn free_subnet() -> Ipv4Addr {
    let used = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .expect("ip is missing: apt-get install -y iproute2 (scripts/install-deps.sh)")
            .stdout,
    )
    .into_owned();
    loop {
        let random = rand::random::<u32>() & 0x003f_fffc;
        let base = Ipv4Addr::from(0x0a80_0000 | random);
        let octets = base.octets();
        let prefix = format!("{}.{}.{}.", octets[0], octets[1], octets[2]);
        if random != 0 && !used.contains(&prefix) {
            return Ipv4Addr::from(u32::from(base) + 1);
        }
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("the emulated WAN needs root, iproute2 and nftables; running {command:?}: {e}")
    });
    assert!(
        output.status.success(),
        "the emulated WAN needs root and network namespaces; {command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
