//! Test support: a real OpenLDAP directory (Debian's `slapd`) on loopback, for the `ldap` source.
//!
//! [`Directory::start`] writes a `slapd.conf` (mdb backend, memberof overlay, the standard
//! schemas) into a temporary
//! folder, seeds the database with `slapadd` ([`SEED`]: users, groups with `member` and
//! `uniqueMember`, an entry with special characters in its name), and starts `slapd` in the
//! foreground on two free loopback ports: `ldap://` (StartTLS offered) and `ldaps://`, with a
//! certificate made by `scripts/make-certs.sh` (CN localhost, SAN 127.0.0.1). The process is a
//! [`Proc`]: killed and reaped on drop, also when a test panics. Every wait is bounded.
//!
//! Needs `mod e2e_support;` beside it. slapd and the ldap-utils come from scripts/setup.sh (apt);
//! a missing one is a panic that says so, never a skip.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::e2e_support::{Proc, READY_TIMEOUT, free_ports, make_certs};

pub const SUFFIX: &str = "dc=example,dc=org";
/// The directory's administrator (slapd.conf's `rootdn`), for changes made by the tests.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "admin-secret";
/// The service account checkpoint binds as before searching.
pub const SERVICE_DN: &str = "cn=checkpoint,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-secret";
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";
/// A user whose name holds a comma, a quote, spaces, parentheses and an asterisk: special in a
/// DN (RFC 4514) and in a filter (RFC 4515) alike.
pub const ODD_USER: &str = "o'neil, jr (*)";
/// Its DN as the seed writes it.
pub const ODD_DN: &str = r"uid=o'neil\, jr (*),ou=people,dc=example,dc=org";

/// The seeded entries. Each user's password is `<uid>-password`. `seeAlso` lists the DNs of the
/// user's groups, as the `memberOf` overlay would (overlays do not run under slapadd), for the
/// source's group-attribute mode.
pub const SEED: &str = r"dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: cn=checkpoint,dc=example,dc=org
objectClass: person
cn: checkpoint
sn: service account
userPassword: service-secret

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice Liddell
sn: Liddell
mail: alice@example.org
userPassword: alice-password
seeAlso: cn=admins,ou=groups,dc=example,dc=org
seeAlso: cn=staff,ou=groups,dc=example,dc=org

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
userPassword: bob-password
seeAlso: cn=staff,ou=groups,dc=example,dc=org

dn: uid=o'neil\, jr (*),ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: o'neil, jr (*)
cn: Odd O'Neil
sn: O'Neil
userPassword: o'neil, jr (*)-password
seeAlso: cn=r&d,ou=groups,dc=example,dc=org

dn: uid=nopass,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: nopass
cn: No Password
sn: Password

dn: cn=admins,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: admins
member: uid=alice,ou=people,dc=example,dc=org

dn: cn=staff,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: staff
member: uid=alice,ou=people,dc=example,dc=org
member: uid=bob,ou=people,dc=example,dc=org
member: uid=o'neil\, jr (*),ou=people,dc=example,dc=org

dn: cn=r&d,ou=groups,dc=example,dc=org
objectClass: groupOfUniqueNames
cn: r&d
uniqueMember: uid=o'neil\, jr (*),ou=people,dc=example,dc=org
";

/// The password of a seeded user.
pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// `Authorization: Basic` for `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An OpenLDAP program: on the PATH, or in /usr/sbin where Debian puts the server's.
pub fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!("{name} is missing: run scripts/setup.sh first (apt: slapd ldap-utils)")
    })
}

/// A running slapd.
pub struct Directory {
    proc: Option<Proc>,
    /// `ldap://` (plain, StartTLS offered).
    pub port: u16,
    /// `ldaps://`.
    pub tls_port: u16,
    /// The certificates (`ca.crt` signs slapd's).
    pub tls: PathBuf,
    conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Directory {
    /// Makes the certificates, the configuration and the database, and starts slapd; returns
    /// once it accepts connections on both ports.
    pub async fn start() -> Directory {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = dir.path().join("tls");
        make_certs(&tls);
        let db = dir.path().join("db");
        std::fs::create_dir(&db).expect("db folder");
        let conf = dir.path().join("slapd.conf");
        std::fs::write(&conf, slapd_conf(dir.path(), &tls, &db)).expect("write slapd.conf");
        let seed = dir.path().join("seed.ldif");
        std::fs::write(&seed, SEED).expect("write seed.ldif");
        let out = Command::new(program("slapadd"))
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&seed)
            .output()
            .expect("run slapadd");
        assert!(
            out.status.success(),
            "slapadd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let [port, tls_port] = free_ports::<2>();
        let mut directory = Directory {
            proc: None,
            port,
            tls_port,
            tls,
            conf,
            dir,
        };
        directory.run().await;
        directory
    }

    /// Starts slapd on the directory's ports and waits until both accept connections.
    async fn run(&mut self) {
        let mut command = Command::new(program("slapd"));
        command
            .arg("-f")
            .arg(&self.conf)
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.port, self.tls_port
            ))
            // A debug level keeps slapd in the foreground, a child the Proc can kill.
            .args(["-d", "0"]);
        let mut proc = Proc::spawn("slapd", command, self.dir.path());
        let started = Instant::now();
        loop {
            proc.assert_running();
            let both = [self.port, self.tls_port]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if both {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                proc.fail("slapd did not listen in time");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.proc = Some(proc);
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The CA that signed slapd's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tls.join("ca.crt")
    }

    /// Kills slapd (the directory becomes unreachable); [`Directory::restart`] brings it back
    /// with the same data.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// Freezes slapd (SIGSTOP): connections are accepted by the kernel but nothing answers, as
    /// with a hung directory. [`Directory::resume`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.proc.as_ref().map_or(0, Proc::pid);
        assert_ne!(pid, 0, "slapd is not running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Connections from this process's side to slapd's ports that are established now (from
    /// /proc/net/tcp: the remote port is slapd's).
    pub fn client_connections(&self) -> usize {
        let ports = [self.port, self.tls_port];
        std::fs::read_to_string("/proc/net/tcp")
            .expect("read /proc/net/tcp")
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let remote_port = fields
                    .get(2)
                    .and_then(|remote| remote.rsplit_once(':'))
                    .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
                fields.get(3) == Some(&"01") && remote_port.is_some_and(|p| ports.contains(&p))
            })
            .count()
    }

    /// Applies an LDIF change as the administrator, with `ldapmodify` over `ldap://`.
    pub fn modify(&self, ldif: &str) {
        let mut child = Command::new(program("ldapmodify"))
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ldapmodify");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ldif.as_bytes())
            .expect("write the change");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if child.try_wait().expect("wait for ldapmodify").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ldapmodify did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("ldapmodify output");
        assert!(
            out.status.success(),
            "ldapmodify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The slapd.conf of a test directory in `dir`: the standard schemas, TLS with the test
/// certificates, one mdb database under [`SUFFIX`] with the memberof overlay (it maintains
/// `memberOf` for groups changed while slapd runs, not for the seed), and access rules as a real deployment has
/// them (passwords usable only to bind).
fn slapd_conf(dir: &Path, tls: &Path, db: &Path) -> String {
    let schema = |name: &str| format!("include /etc/ldap/schema/{name}.schema\n");
    let mut conf = String::new();
    for name in ["core", "cosine", "inetorgperson", "nis"] {
        conf.push_str(&schema(name));
    }
    conf.push_str(&format!(
        r#"pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
TLSCACertificateFile {tls}/ca.crt
TLSCertificateFile {tls}/server.crt
TLSCertificateKeyFile {tls}/server.key
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {db}
overlay memberof
access to attrs=userPassword
  by * auth
access to *
  by * read
"#,
        dir = dir.display(),
        tls = tls.display(),
        db = db.display(),
    ));
    conf
}
