//! Network namespaces and veth links a test makes for itself (`ip netns`,
//! `ip link`, as root), to put servers on a network of their own and cut
//! a link and heal it. Names carry the test process's id; a test's
//! namespaces are deleted when it ends, and those of a test process that
//! died are deleted by the next one.

use std::process::Command;

const PREFIX: &str = "berth-test-";

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program` run by `wrap` (say [`Netns::wrap`]), or by itself when
/// `wrap` is empty.
pub fn command(wrap: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrap.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A network namespace of this test process, with its loopback up.
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace `berth-test-TAG-PID`.
    pub fn new(tag: &str) -> Netns {
        remove_stale();
        let name = format!("{PREFIX}{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// What runs a command inside the namespace: `ip netns exec NAME`
    /// (which execs it: the process is the command's own).
    pub fn wrap(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// Gives the namespace's loopback interface the address `cidr` too.
    pub fn add_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo"]);
    }

    /// The `/etc/hosts` of what runs inside (by [`Netns::wrap`], which
    /// mounts `/etc/netns/NAME/hosts` over it).
    pub fn hosts(&self, text: &str) {
        let dir = self.etc();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
    }

    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// A TCP listener on `addr` inside the namespace, for this process
    /// (bound by a thread that enters the namespace; the socket stays in
    /// it).
    pub fn bind(&self, addr: &str) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = addr.to_owned();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns with a namespace file this thread opened; only
            // this thread moves, and it ends here.
            let entered =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(
                entered,
                0,
                "setns {path}: {}",
                std::io::Error::last_os_error()
            );
            std::net::TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc());
        // Its veth links go with it, once the processes in it are gone.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes the namespaces of test processes that are gone (killed before
/// they could).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
        }
    }
}

/// A /24 of this test process for link `n` (0–9): `10.20N.X.0/24`, X from
/// the process id, so that test runs side by side do not share one.
fn subnet(n: u8) -> String {
    format!("10.{}.{}", 200 + n, 20 + std::process::id() % 200)
}

/// A veth pair between two namespaces (`None`: this process's own), its
/// ends at `.1` and `.2` of a subnet of their own.
pub struct Veth {
    ends: [(Option<String>, String); 2],
    subnet: String,
}

impl Veth {
    /// Link `n` (0–9) between `one` (at `.1`) and `two` (at `.2`), up.
    pub fn new(n: u8, one: Option<&Netns>, two: Option<&Netns>) -> Veth {
        let pid = std::process::id();
        let ends = [
            (one.map(|ns| ns.name.clone()), format!("bt{pid}l{n}a")),
            (two.map(|ns| ns.name.clone()), format!("bt{pid}l{n}b")),
        ];
        ip(&[
            "link", "add", &ends[0].1, "type", "veth", "peer", "name", &ends[1].1,
        ]);
        let veth = Veth {
            ends,
            subnet: subnet(n),
        };
        for (i, (ns, dev)) in veth.ends.iter().enumerate() {
            if let Some(ns) = ns {
                ip(&["link", "set", dev, "netns", ns]);
            }
            let addr = format!("{}.{}/24", veth.subnet, i + 1);
            veth.ip_in(i, &["addr", "add", &addr, "dev", dev]);
            veth.ip_in(i, &["link", "set", dev, "up"]);
        }
        veth
    }

    /// `ip ARGS` in the namespace of end `i`.
    fn ip_in(&self, i: usize, args: &[&str]) {
        let mut all = Vec::new();
        if let Some(ns) = &self.ends[i].0 {
            all.extend(["-n", ns.as_str()]);
        }
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The address of the second end.
    pub fn two(&self) -> String {
        format!("{}.2", self.subnet)
    }

    /// Takes the second end down (`false`) or up again (`true`). Down, the
    /// first end has no carrier: what it sends is dropped without a word,
    /// as on a cut cable.
    pub fn set_two(&self, up: bool) {
        let dev = self.ends[1].1.clone();
        self.ip_in(1, &["link", "set", &dev, if up { "up" } else { "down" }]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // An end in this process's namespace is deleted here (its peer goes
        // with it); ends in namespaces go with them.
        for (ns, dev) in &self.ends {
            if ns.is_none() {
                let _ = Command::new("ip").args(["link", "del", dev]).status();
                return;
            }
        }
    }
}
