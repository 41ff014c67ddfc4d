//! Network namespaces and veth links a test makes for itself (`ip netns`,
//! `ip link`, as root), to put servers on networks of their own and cut a
//! link and heal it.
//!
//! Servers run inside namespaces, which have no route out: whatever they
//! try to reach, nothing leaves the machine. This process reaches them on
//! links of its own, in 198.18.0.0/15 (set aside for benchmarking network
//! devices, RFC 2544: no real network uses it), each test process on /24s
//! it holds ([`Block`]). Names carry the process's id; a
//! test's namespaces are deleted when it ends, and those of a test process
//! that died, with what still runs in them, by the next one.

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
        // One of this name is a dead process's whose id this one has.
        clear(&name);
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
        let dir = etc(&self.name);
        // Another test may remove `/etc/netns` between the two, once.
        let write = || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("hosts"), text)
        };
        write().or_else(|_| write()).unwrap();
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes stay
    /// in the namespace.
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        within(&self.name, f)
    }

    /// A TCP listener on `addr` inside the namespace, for this process.
    pub fn bind(&self, addr: &str) -> std::net::TcpListener {
        let addr = addr.to_owned();
        self.within(move || {
            std::net::TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }
}

/// Runs `f` on a thread inside the namespace `name`.
fn within<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
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
        f()
    })
    .join()
    .unwrap()
}

/// A TCP connection to `addr` inside the namespace `name`, for this
/// process.
pub fn connect_in(
    name: &str,
    addr: &str,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    within(name, move || {
        std::net::TcpStream::connect_timeout(&addr, timeout)
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn etc(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}

/// Deletes namespace `name` and its `/etc/netns` folder; its veth links
/// go with it once the processes in it are gone.
fn delete(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    let _ = std::fs::remove_dir_all(etc(name));
    // The machine's own folder, if it is empty: made by a test.
    let _ = std::fs::remove_dir("/etc/netns");
}

/// Deletes the namespaces of test processes that are gone (killed before
/// they could), after killing what still runs in them: servers the dead
/// process started there.
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
        if !alive(pid) {
            clear(name);
        }
    }
}

/// Kills what runs in the namespace `name`, if it exists, and deletes it.
fn clear(name: &str) {
    if !std::path::Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    delete(name);
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Four /24s of 198.18.0.0/15 held by this test process (one of 128
/// blocks), for as long as it holds a lock on the block's file: a lock the
/// kernel lets go when the process ends, however it ends.
pub struct Block {
    index: usize,
    _lock: std::fs::File,
}

impl Block {
    pub fn take() -> Block {
        // One folder for every test process, whatever its TMPDIR.
        let dir = std::path::Path::new("/tmp/berth-test-networks");
        std::fs::create_dir_all(dir).unwrap();
        let pid = std::process::id() as usize;
        for step in 0..128 {
            let index = (pid + step) % 128;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("block-{index}")))
                .unwrap();
            // SAFETY: flock on a descriptor this function holds open.
            let locked = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            } == 0;
            if locked {
                return Block { index, _lock: file };
            }
        }
        panic!("every block of test networks is held");
    }

    /// The `n`th /24 (0–3) of the block, as `a.b.c`.
    fn subnet(&self, n: u8) -> String {
        let k = self.index * 4 + usize::from(n);
        format!("198.{}.{}", 18 + k / 256, k % 256)
    }
}

/// A veth pair between two namespaces (`None`: this process's own), its
/// ends at `.1` and `.2` of a /24 of the test's.
pub struct Veth {
    ends: [(Option<String>, String); 2],
    subnet: String,
}

impl Veth {
    /// Link `n` (0–3) of `block` between `one` (at `.1`) and `two` (at
    /// `.2`), up.
    pub fn new(block: &Block, n: u8, one: Option<&Netns>, two: Option<&Netns>) -> Veth {
        assert!(n < 4, "a block has four links");
        // Named by the block, which no other test holds now; a link of the
        // block's last holder, killed, may be left here: it goes first.
        let i = block.index;
        let ends = [
            (one.map(|ns| ns.name.clone()), format!("berth{i}l{n}a")),
            (two.map(|ns| ns.name.clone()), format!("berth{i}l{n}b")),
        ];
        for (_, dev) in &ends {
            let _ = Command::new("ip")
                .args(["link", "del", dev])
                .stderr(std::process::Stdio::null())
                .status();
        }
        ip(&[
            "link", "add", &ends[0].1, "type", "veth", "peer", "name", &ends[1].1,
        ]);
        let veth = Veth {
            ends,
            subnet: block.subnet(n),
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
