//! A hostile guest against the host side of vm isolation. The guest owns its kernel,
//! so it can put any FUSE request on the virtio-fs queues; this suite does exactly
//! that, with no VM: a vhost-user frontend of its own (`husk_e2e::vhost_user`,
//! `husk_e2e::fuse_client`) drives virtiofsd spawned with the arguments husk's qemu
//! backend gives it (`husk_runtime::hypervisor::qemu::virtiofsd_args`), and the suite
//! checks the host afterwards: canaries outside the share intact, nothing created
//! outside it, every escaping request refused, and virtiofsd itself confined (its
//! root is not the host's, it holds no host directory or file outside the share).
//!
//! Why the sandbox is what confines: virtiofsd 1.14 opens (LOOKUP, CREATE) with
//! openat2(RESOLVE_IN_ROOT), but passes the guest's names straight to mkdirat,
//! mknodat, symlinkat, unlinkat, renameat and linkat, where an absolute name ignores
//! the directory. Only a root that is the share (`--sandbox namespace`) stops those.
//!
//! A second case attacks husk-vmm's jail: husk-vmm started exactly as the builtin
//! backend starts it, with a raw test guest, is inspected from /proc and probed from
//! inside its mount namespace, as code that took over the VMM would be.
//!
//! Needs: root (virtiofsd runs as root, as under husk), virtiofsd 1.14 in
//! $HUSK_CACHE/bin or on PATH (`bash scripts/setup.sh`), /dev/kvm (any kind: the raw
//! guest runs on PVM too) and husk-vmm built. It fails loudly without.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::linux::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_e2e::cmd::{self, Background};
use husk_e2e::fuse_client::{FuseClientError, FuseReply, FuseSession, ROOT_NODE};
use husk_runtime::hypervisor::qemu::{virtiofsd_args, FsSandbox};
use libtest_mimic::{Arguments, Failed};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A whole case, virtiofsd's start and every request included.
const CASE_TIME_BOX: Duration = Duration::from_secs(120);
/// One FUSE request (and each vhost-user message) must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// virtiofsd's socket, relative to the state dir it works in (as under husk).
const VIRTIOFS_SOCKET: &str = "virtiofs.sock";
/// How many times the ".." walk climbs: more than any temp dir is deep.
const DOTDOT_CLIMBS: usize = 8;

struct Env {
    virtiofsd: PathBuf,
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("hostile");
    let virtiofsd = husk_runtime::hypervisor::find_program("virtiofsd").unwrap_or_else(|| {
        panic!(
            "virtiofsd is not installed (neither in $HUSK_CACHE/bin nor on PATH); \
             `bash scripts/setup.sh` installs virtiofsd 1.14"
        )
    });
    let env = Arc::new(Env { virtiofsd });
    let cases: Vec<husk_e2e::Case<Env>> = vec![
        (
            "virtiofsd_refuses_names_outside_the_share",
            virtiofsd_refuses_names_outside_the_share,
        ),
        (
            "husk_vmm_in_its_jail_reaches_nothing_of_the_host",
            husk_vmm_in_its_jail_reaches_nothing_of_the_host,
        ),
    ];
    libtest_mimic::run(&args, husk_e2e::trials(&env, cases)).exit();
}

/// A case's deadline: checked between steps, on top of each request's own timeout.
struct Deadline(Instant);

impl Deadline {
    fn start() -> Self {
        Self(Instant::now() + CASE_TIME_BOX)
    }

    fn check(&self, step: &str) -> Result<(), Failed> {
        husk_e2e::check(Instant::now() < self.0, || {
            format!("the case ran past its {CASE_TIME_BOX:?} time box before {step}")
        })
    }
}

/// Host files and directories outside the share that a confined virtiofsd cannot
/// touch: `/tmp/husk-canary-<pid>-<case>/{victim,victim-dir}` and
/// `/etc/husk-canary-<pid>-<case>`.
/// Everything they and the attacks may create is removed on drop.
struct HostCanaries {
    name: String,
    dir: PathBuf,
    victim_file: PathBuf,
    victim_dir: PathBuf,
    etc_file: PathBuf,
    content: String,
    /// Paths outside the share an attack may have created, removed on drop.
    escape_paths: Vec<PathBuf>,
}

impl HostCanaries {
    /// Plants canaries named for this process and `case` (cases run in parallel,
    /// each with its own).
    fn plant(case: &str) -> Self {
        let name = format!("husk-canary-{}-{case}", std::process::id());
        let dir = Path::new("/tmp").join(&name);
        let canaries = Self {
            victim_file: dir.join("victim"),
            victim_dir: dir.join("victim-dir"),
            etc_file: Path::new("/etc").join(&name),
            dir,
            content: format!("{name}: a hostile guest must not reach this\n"),
            name,
            escape_paths: Vec::new(),
        };
        canaries.restore();
        canaries
    }

    /// Recreates whatever an attack destroyed, so each attack is judged on its own.
    fn restore(&self) {
        std::fs::create_dir_all(&self.victim_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.victim_dir.display()));
        for file in [&self.victim_file, &self.etc_file] {
            std::fs::write(file, &self.content)
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        }
    }

    /// What is wrong with the canaries: missing, changed or replaced.
    fn damage(&self) -> Vec<String> {
        let mut damage = Vec::new();
        for file in [&self.victim_file, &self.etc_file] {
            match std::fs::read_to_string(file) {
                Ok(text) if text == self.content => {}
                Ok(_) => damage.push(format!("canary {} was changed", file.display())),
                Err(e) => damage.push(format!("canary {} is gone: {e}", file.display())),
            }
        }
        match std::fs::symlink_metadata(&self.victim_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => damage.push(format!(
                "canary dir {} was replaced",
                self.victim_dir.display()
            )),
            Err(e) => damage.push(format!(
                "canary dir {} is gone: {e}",
                self.victim_dir.display()
            )),
        }
        damage
    }

    /// A path in the canary dir an attack tries to create, noted for cleanup.
    fn target(&mut self, leaf: &str) -> PathBuf {
        let path = self.dir.join(leaf);
        self.escape_paths.push(path.clone());
        path
    }

    /// A path outside the share (not in the canary dir) an attack could create.
    fn note_escape(&mut self, path: PathBuf) {
        self.escape_paths.push(path);
    }
}

impl Drop for HostCanaries {
    fn drop(&mut self) {
        for path in self.escape_paths.iter().rev() {
            if path.starts_with(&self.dir) {
                continue;
            }
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let _ = std::fs::remove_dir_all(path);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(path);
                }
                Err(_) => {}
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.etc_file);
    }
}

/// virtiofsd spawned as husk's qemu backend spawns it: `virtiofsd_args`, working in a
/// state dir of its own (the socket named relative to it), output to a log there, in
/// its own process group, killed if we die. Dropping it kills and reaps it and the
/// process serving for it.
struct VirtiofsdUnderAttack {
    state: tempfile::TempDir,
    process: Background,
}

impl VirtiofsdUnderAttack {
    fn spawn(program: &Path, share: &Path) -> Result<Self, Failed> {
        let state = tempfile::Builder::new()
            .prefix("husk-hostile-state-")
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(state.path().join("virtiofsd.log")).unwrap();
        let mut command = Command::new(program);
        command
            .args(virtiofsd_args(
                Path::new(VIRTIOFS_SOCKET),
                share,
                FsSandbox::for_host(),
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(state.path())
            .process_group(0);
        // SAFETY: runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let virtiofsd = Self {
            process: Background::spawn(&mut command),
            state,
        };
        let socket = virtiofsd.socket();
        if !cmd::wait_until(SOCKET_TIMEOUT, || socket.exists()) {
            return Err(virtiofsd.fail(format!(
                "virtiofsd made no socket {} within {SOCKET_TIMEOUT:?}",
                socket.display()
            )));
        }
        Ok(virtiofsd)
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join(VIRTIOFS_SOCKET)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("virtiofsd.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// A failure carrying virtiofsd's command line and log.
    fn fail(&self, what: String) -> Failed {
        format!(
            "{what}\nvirtiofsd {}\n----- virtiofsd log -----\n{}",
            virtiofsd_args(
                Path::new(VIRTIOFS_SOCKET),
                Path::new("<share>"),
                FsSandbox::for_host()
            )
            .join(" "),
            self.log()
        )
        .into()
    }

    fn children(&self) -> Vec<i32> {
        children_of(self.process.pid())
    }

    /// The process serving the socket: with `--sandbox namespace` virtiofsd forks
    /// and its child serves, in new namespaces; otherwise virtiofsd itself.
    fn serving_pid(&self) -> i32 {
        self.children()
            .first()
            .copied()
            .unwrap_or(self.process.pid())
    }
}

impl Drop for VirtiofsdUnderAttack {
    fn drop(&mut self) {
        // The serving child first, while it is still our child's (so its pid is
        // still its): virtiofsd reaps it, then we kill and reap virtiofsd.
        let children = self.children();
        for child in &children {
            let _ = kill(Pid::from_raw(*child), Signal::SIGKILL);
        }
        cmd::wait_until(Duration::from_secs(5), || {
            children
                .iter()
                .all(|c| !Path::new(&format!("/proc/{c}")).exists())
        });
        // Background's drop kills and reaps virtiofsd itself.
    }
}

/// Children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    children
}

/// Host inode numbers of everything under `dir` (itself included). The share and
/// the canaries are on one file system here (/tmp), so an inode number names a file.
fn inodes_under(dir: &Path) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        inodes.insert(meta.st_ino());
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        }
    }
    inodes
}

/// (device, inode) of everything under `dir`, for judging virtiofsd's descriptors.
fn files_under(dir: &Path) -> HashSet<(u64, u64)> {
    let mut files = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        files.insert((meta.st_dev(), meta.st_ino()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        }
    }
    files
}

/// What an attack's reply must be.
#[derive(Clone, Copy)]
enum Expect {
    /// An error: the name reaches outside the share.
    Refused,
    /// An error, or an entry inside the share: in a sandbox whose root is the share,
    /// ".." of the root is the root, as in any chroot.
    RefusedOrInsideShare,
}

/// One attack's result, for the report.
struct Verdict {
    attack: String,
    outcome: String,
    problems: Vec<String>,
}

/// The share, the canaries and the session under attack, and what happened so far.
struct Attacker {
    share: tempfile::TempDir,
    canaries: HostCanaries,
    session: FuseSession,
    verdicts: Vec<Verdict>,
}

impl Attacker {
    /// Sends one attack and judges it: the reply (against `expect`), the canaries,
    /// and each of `escapes` (paths outside the share it must not have created).
    fn attack(
        &mut self,
        attack: String,
        expect: Expect,
        escapes: Vec<PathBuf>,
        send: impl FnOnce(&mut FuseSession) -> Result<FuseReply, FuseClientError>,
    ) -> Result<FuseReply, Failed> {
        for path in &escapes {
            if !path.starts_with(&self.canaries.dir) {
                self.canaries.note_escape(path.clone());
            }
        }
        let mut problems = Vec::new();
        // A closed connection or a dead daemon is not a refusal: fail the case.
        let reply = send(&mut self.session)
            .map_err(|e| format!("{attack}: the request failed below FUSE: {e}"))?;
        let outcome = reply.outcome();
        match (expect, reply.errno(), reply.entry()) {
            (_, Some(_), _) => {}
            (Expect::RefusedOrInsideShare, None, Some(entry))
                if inodes_under(self.share.path()).contains(&entry.ino) => {}
            (Expect::RefusedOrInsideShare, None, Some(entry)) => problems.push(format!(
                "succeeded with host inode {}, which is not in the share",
                entry.ino
            )),
            (_, None, _) => problems.push("succeeded: a name outside the share was served".into()),
        }
        problems.extend(self.canaries.damage());
        for path in &escapes {
            if std::fs::symlink_metadata(path).is_ok() {
                problems.push(format!("{} was created outside the share", path.display()));
            }
        }
        self.canaries.restore();
        self.verdicts.push(Verdict {
            attack,
            outcome,
            problems,
        });
        Ok(reply)
    }

    fn report(&self) -> (String, bool) {
        let mut report = String::new();
        let mut harmed = false;
        for verdict in &self.verdicts {
            let _ = writeln!(report, "  {} -> {}", verdict.attack, verdict.outcome);
            for problem in &verdict.problems {
                harmed = true;
                let _ = writeln!(report, "      HOST HARMED: {problem}");
            }
        }
        (report, harmed)
    }
}

/// The four ways to create a name, each sent with an absolute name and with a name
/// containing '/'.
#[derive(Clone, Copy)]
enum Creation {
    Mkdir,
    MknodFifo,
    Symlink,
    Create,
}

impl Creation {
    const ALL: [Self; 4] = [Self::Mkdir, Self::MknodFifo, Self::Symlink, Self::Create];

    fn opcode(self) -> &'static str {
        match self {
            Self::Mkdir => "MKDIR",
            Self::MknodFifo => "MKNOD (fifo)",
            Self::Symlink => "SYMLINK (-> /etc/shadow)",
            Self::Create => "CREATE",
        }
    }

    fn leaf(self) -> &'static str {
        match self {
            Self::Mkdir => "planted-dir",
            Self::MknodFifo => "planted-fifo",
            Self::Symlink => "planted-symlink",
            Self::Create => "planted-file",
        }
    }

    fn send(
        self,
        session: &mut FuseSession,
        parent: u64,
        name: &[u8],
    ) -> Result<FuseReply, FuseClientError> {
        match self {
            Self::Mkdir => session.mkdir(parent, name),
            Self::MknodFifo => session.mknod_fifo(parent, name),
            Self::Symlink => session.symlink(parent, name, b"/etc/shadow"),
            Self::Create => session.create(parent, name),
        }
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

fn virtiofsd_refuses_names_outside_the_share(env: &Env) -> Result<(), Failed> {
    let deadline = Deadline::start();
    let share = tempfile::Builder::new()
        .prefix("husk-hostile-share-")
        .tempdir()
        .expect("temp dir");
    std::fs::create_dir(share.path().join("subdir")).unwrap();
    std::fs::write(share.path().join("rename-me"), "in the share\n").unwrap();
    std::fs::write(share.path().join("link-source"), "in the share\n").unwrap();
    let canaries = HostCanaries::plant("fuse");
    let virtiofsd = VirtiofsdUnderAttack::spawn(&env.virtiofsd, share.path())?;
    let session = FuseSession::connect(&virtiofsd.socket(), REQUEST_TIMEOUT)
        .map_err(|e| virtiofsd.fail(format!("vhost-user setup or FUSE_INIT failed: {e}")))?;
    let mut attacker = Attacker {
        share,
        canaries,
        session,
        verdicts: Vec::new(),
    };
    let result = attack_everything(&mut attacker, &deadline)
        .and_then(|()| check_confinement(&virtiofsd, &attacker));
    let (report, harmed) = attacker.report();
    eprintln!(
        "virtiofsd under attack ({}):\n{report}",
        virtiofsd_args(
            Path::new(VIRTIOFS_SOCKET),
            Path::new("<share>"),
            FsSandbox::for_host()
        )
        .join(" ")
    );
    if let Ok(confinement) = &result {
        eprintln!("  confinement: {confinement}");
    }
    match result {
        Err(e) => Err(virtiofsd.fail(format!(
            "{}\nattacks so far:\n{report}",
            e.message().unwrap_or("(no message)")
        ))),
        Ok(_) if harmed => Err(virtiofsd.fail(format!(
            "a hostile guest's FUSE requests reached the host outside the share:\n{report}"
        ))),
        Ok(_) => Ok(()),
    }
}

fn attack_everything(attacker: &mut Attacker, deadline: &Deadline) -> Result<(), Failed> {
    let share = attacker.share.path().to_path_buf();
    let share_parent = share
        .parent()
        .expect("a temp dir has a parent")
        .to_path_buf();
    let name = attacker.canaries.name.clone();

    deadline.check("LOOKUP \"/etc\"")?;
    attacker.attack(
        "LOOKUP \"/etc\" in the share's root".into(),
        Expect::Refused,
        vec![],
        |s| s.lookup(ROOT_NODE, b"/etc"),
    )?;

    deadline.check("LOOKUP \"..\"")?;
    attacker.attack(
        "LOOKUP \"..\" in the share's root".into(),
        Expect::RefusedOrInsideShare,
        vec![],
        |s| s.lookup(ROOT_NODE, b".."),
    )?;

    deadline.check("UNLINK")?;
    let etc_file = bytes(&attacker.canaries.etc_file);
    attacker.attack(
        format!("UNLINK {:?}", attacker.canaries.etc_file),
        Expect::Refused,
        vec![],
        |s| s.unlink(ROOT_NODE, &etc_file),
    )?;

    deadline.check("RMDIR")?;
    let victim_dir = bytes(&attacker.canaries.victim_dir);
    attacker.attack(
        format!("RMDIR {:?}", attacker.canaries.victim_dir),
        Expect::Refused,
        vec![],
        |s| s.rmdir(ROOT_NODE, &victim_dir),
    )?;

    for creation in Creation::ALL {
        deadline.check(creation.opcode())?;
        let target = attacker.canaries.target(creation.leaf());
        let absolute = bytes(&target);
        attacker.attack(
            format!("{} {target:?}", creation.opcode()),
            Expect::Refused,
            vec![target.clone()],
            |s| creation.send(s, ROOT_NODE, &absolute),
        )?;

        // A relative name with '/': from the share's root up into its parent.
        let leaf = format!("{name}-dotdot-{}", creation.leaf());
        let slashed = format!("subdir/../../{leaf}");
        attacker.attack(
            format!("{} {slashed:?} in the share's root", creation.opcode()),
            Expect::RefusedOrInsideShare,
            vec![share_parent.join(&leaf)],
            |s| creation.send(s, ROOT_NODE, slashed.as_bytes()),
        )?;
    }

    deadline.check("RENAME")?;
    let renamed = attacker.canaries.target("planted-by-rename");
    let renamed_name = bytes(&renamed);
    attacker.attack(
        format!("RENAME share/rename-me -> {renamed:?}"),
        Expect::Refused,
        vec![renamed.clone()],
        |s| s.rename(ROOT_NODE, b"rename-me", ROOT_NODE, &renamed_name),
    )?;
    if !share.join("rename-me").exists() {
        // Moved out of the share (already reported): put it back for what follows.
        std::fs::write(share.join("rename-me"), "in the share\n").unwrap();
    }

    deadline.check("LINK")?;
    let source = attacker
        .session
        .lookup(ROOT_NODE, b"link-source")
        .map_err(|e| format!("LOOKUP link-source: {e}"))?;
    let source = source
        .entry()
        .ok_or_else(|| format!("LOOKUP link-source in the share: {}", source.outcome()))?;
    let linked = attacker.canaries.target("planted-by-link");
    let linked_name = bytes(&linked);
    attacker.attack(
        format!("LINK share/link-source -> {linked:?}"),
        Expect::Refused,
        vec![linked.clone()],
        |s| s.link(source.node, ROOT_NODE, &linked_name),
    )?;

    // Walk up: LOOKUP ".." from the root, then from what that returned, and so on;
    // then CREATE where the walk ended. Confined, the walk never leaves the root.
    let mut node = ROOT_NODE;
    for climb in 1..=DOTDOT_CLIMBS {
        deadline.check("the \"..\" walk")?;
        let reply = attacker.attack(
            format!("LOOKUP \"..\" climb {climb} (from node {node})"),
            Expect::RefusedOrInsideShare,
            vec![],
            |s| s.lookup(node, b".."),
        )?;
        match reply.entry() {
            Some(entry) => node = entry.node,
            None => break,
        }
    }
    let walked = format!("{name}-walked");
    let mut escapes: Vec<PathBuf> = share.ancestors().skip(1).map(|a| a.join(&walked)).collect();
    escapes.dedup();
    deadline.check("CREATE after the walk")?;
    attacker.attack(
        format!("CREATE {walked:?} where the \"..\" walk ended (node {node})"),
        Expect::RefusedOrInsideShare,
        escapes,
        |s| s.create(node, walked.as_bytes()),
    )?;
    Ok(())
}

/// virtiofsd's serving process is confined: its root is not the host's, and it holds
/// no directory or regular file outside the share and its state dir. Returns what it
/// looked at, for the report.
fn check_confinement(
    virtiofsd: &VirtiofsdUnderAttack,
    attacker: &Attacker,
) -> Result<String, Failed> {
    let pid = virtiofsd.serving_pid();
    let mut problems = Vec::new();

    let host_root = std::fs::metadata("/").expect("stat /");
    let its_root = std::fs::metadata(format!("/proc/{pid}/root"))
        .map_err(|e| format!("stat /proc/{pid}/root: {e}"))?;
    if (its_root.st_dev(), its_root.st_ino()) == (host_root.st_dev(), host_root.st_ino()) {
        problems.push(format!(
            "virtiofsd (pid {pid})'s root is the host's / (/proc/{pid}/root is dev {} ino {})",
            its_root.st_dev(),
            its_root.st_ino()
        ));
    }

    let mut allowed = files_under(attacker.share.path());
    allowed.extend(files_under(virtiofsd.state.path()));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("list /proc/{pid}/fd: {e}"))?;
    let mut checked = 0;
    for fd in fds.flatten() {
        checked += 1;
        let link = std::fs::read_link(fd.path()).unwrap_or_default();
        let text = link.display().to_string();
        // Guest memory and other anonymous files are not host paths.
        if text.starts_with("/memfd:") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(fd.path()) else {
            continue;
        };
        if !(meta.is_dir() || meta.is_file()) || on_procfs(&fd.path()) {
            continue;
        }
        if !allowed.contains(&(meta.st_dev(), meta.st_ino())) {
            problems.push(format!(
                "virtiofsd (pid {pid}) holds fd {} on host {} {text}, outside the share and its state dir",
                fd.file_name().to_string_lossy(),
                if meta.is_dir() { "directory" } else { "file" },
            ));
        }
    }
    husk_e2e::check(problems.is_empty(), || {
        format!(
            "virtiofsd is not confined to the share:\n  {}",
            problems.join("\n  ")
        )
    })?;
    Ok(format!(
        "serving pid {pid} (virtiofsd pid {}): root dev {} ino {} (host / is dev {} ino {}); \
         {checked} descriptors, none on a host directory or file outside the share",
        virtiofsd.process.pid(),
        its_root.st_dev(),
        its_root.st_ino(),
        host_root.st_dev(),
        host_root.st_ino()
    ))
}

/// Whether `path` (a /proc/<pid>/fd link, followed) is on a procfs: virtiofsd keeps
/// /proc/self/fd open by design.
fn on_procfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// The capabilities husk-vmm's virtio-fs thread keeps: CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, SETGID, SETUID, MKNOD (vmm/src/caps.rs).
const FS_WORKER_CAPS: u64 = 0x0800_00db;

/// One `Key:` line of a /proc status file, its value trimmed.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The sorted names in a directory.
fn names_in(dir: &Path) -> Result<Vec<String>, Failed> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// What a process with husk-vmm's mount namespace and root can reach: forked, it
/// enters them (as code running in husk-vmm would be), optionally becomes `uid`, and
/// tries `attacks`; each bit of the exit code says one attack *succeeded*. Only
/// syscalls on C strings made before the fork run in the child.
fn attack_from_inside(
    pid: u32,
    uid: Option<u32>,
    attacks: &[(&std::ffi::CStr, bool)],
) -> Result<i32, Failed> {
    use std::os::fd::AsRawFd;
    let mnt = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("open husk-vmm's mount namespace: {e}"))?;
    // SAFETY: fork in a test process; the child runs only async-signal-safe syscalls
    // on data prepared before the fork, then _exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error()).into()),
        0 => {
            // SAFETY: the forked child: setns, setresgid/setresuid, open, mkdir and
            // _exit on valid C strings and descriptors only.
            unsafe {
                if libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    libc::_exit(100);
                }
                if let Some(id) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(id, id, id) != 0
                        || libc::setresuid(id, id, id) != 0
                    {
                        libc::_exit(101);
                    }
                }
                let mut reached = 0;
                for (i, (path, write)) in attacks.iter().enumerate() {
                    let ok = if *write {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
                            0o644,
                        );
                        fd >= 0 || libc::mkdir(path.as_ptr(), 0o755) == 0
                    } else {
                        libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW) >= 0
                    };
                    if ok {
                        reached |= 1 << i;
                    }
                }
                libc::_exit(reached);
            }
        }
        child => {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            if unsafe { libc::waitpid(child, &mut status, 0) } != child {
                return Err("waitpid".into());
            }
            Ok(libc::WEXITSTATUS(status))
        }
    }
}

/// husk-vmm started as the builtin backend starts it (`husk_runtime::hypervisor::
/// jail`: the jail built, namespaces and mounts made in the child, pivot in husk-vmm,
/// threads switched to the sandbox's uid), with a spinning test guest, a virtio-fs
/// share and a vsock socket. From /proc: its root holds only the jail; its mount,
/// pid, network, IPC and UTS namespaces are its own; every thread runs as the
/// sandbox's uid with no capabilities, but the one virtio-fs thread (uid 0, the
/// file-ownership capabilities only); all have no_new_privs and seccomp. Then it is
/// attacked from inside its namespaces, as code running in it would: a host canary,
/// the state dir, /etc and /proc/sys are unreachable, and as the sandbox's uid it
/// cannot write its root, the artifacts or the share's read-only top.
fn husk_vmm_in_its_jail_reaches_nothing_of_the_host(_env: &Env) -> Result<(), Failed> {
    use husk_runtime::hypervisor::confine::{self, HostIds, IdLease, Launch};
    use husk_runtime::hypervisor::jail::{self, Jail, JailSources};
    let deadline = Deadline::start();
    let canaries = HostCanaries::plant("jail");
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state = work.path().join("state");
    let shared = state.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
    std::fs::write(shared.join("hello"), "served").map_err(|e| e.to_string())?;
    // Makes shared/ a read-only mount, as the runtime's share is at its top.
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&shared)
        .arg(&shared)
        .status();
    husk_e2e::check(bound.is_ok_and(|s| s.success()), || "bind the share".into())?;
    let _unmount = Unmount(shared.clone());
    let ro = Command::new("mount")
        .args(["-o", "remount,bind,ro,nosuid,nodev"])
        .arg(&shared)
        .status();
    husk_e2e::check(ro.is_ok_and(|s| s.success()), || {
        "make the share read-only".into()
    })?;
    // The guest: `jmp $`, forever (raw 64-bit code: boots on any /dev/kvm).
    let guest = work.path().join("spin.bin");
    std::fs::write(&guest, [0xeb, 0xfe]).map_err(|e| e.to_string())?;
    let initramfs = work.path().join("unused-initramfs");
    std::fs::write(&initramfs, "").map_err(|e| e.to_string())?;
    let ids = work.path().join("ids");
    let range = HostIds::new([300_500, 300_520]).map_err(|e| e.to_string())?;
    let lease = IdLease::take(&ids, range, &state).map_err(|e| e.to_string())?;
    let uid = lease.id();
    let jail = Jail::build(
        &state,
        &JailSources {
            kvm: Path::new(jail::KVM_DEVICE),
            kernel: &guest,
            initramfs: &initramfs,
            shared: &shared,
            run: lease.run_dir(),
        },
    )
    .map_err(|e| e.to_string())?;
    let config = husk_vmm_config::VmmConfig {
        machine: husk_vmm_config::MachineConfig {
            raw64: Some("/kernel".into()),
            memory_mib: 16,
            run_as: Some(uid),
            ..Default::default()
        },
        vsock: Some(husk_vmm_config::VsockConfig::new("/run/vsock.sock")),
        fs: vec![husk_vmm_config::FsShare {
            tag: "husk-shared".into(),
            path: "/shared".into(),
            cache: Default::default(),
        }],
        ..Default::default()
    };
    std::fs::write(
        jail.config_file(),
        config.to_json().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    // As the builtin backend writes it: root's only.
    std::fs::set_permissions(
        jail.config_file(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    let args = [
        "--jail".to_string(),
        jail.dir().display().to_string(),
        "--config".to_string(),
        jail::JAIL_CONFIG.to_string(),
    ];
    let program = husk_e2e::husk_vmm_bin();
    let log = state.join("husk-vmm.log");
    let launch = Launch {
        program: &program,
        args: &args,
        dir: &state,
        log: &log,
        console: Some(&state.join("console.log")),
        inherit: &[],
        user: None,
        limits: &confine::base_limits(16384),
        cgroup: None,
        jail: Some(&jail),
    };
    let child = confine::spawn(&launch).map_err(|e| e.to_string())?;
    let mut vmm = KillOnDrop(child);
    let pid = vmm.0.id();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Up once its socket is bound and every thread is confined.
    let socket = lease.run_dir().join("vsock.sock");
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let statuses = || -> Vec<(String, String)> {
        std::fs::read_dir(&task_dir)
            .map(|d| {
                d.flatten()
                    .map(|t| {
                        let comm =
                            std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                        let status =
                            std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                        (comm.trim().to_string(), status)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    loop {
        if let Ok(Some(status)) = vmm.0.try_wait() {
            return Err(
                format!("husk-vmm exited with {status} in its jail: {}", log_text()).into(),
            );
        }
        let threads = statuses();
        let confined = threads.len() > 2
            && threads
                .iter()
                .all(|(_, s)| status_field(s, "Seccomp:") == "2");
        if socket.exists() && confined {
            break;
        }
        deadline.check("husk-vmm came up in its jail")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = names_in(&PathBuf::from(format!("/proc/{pid}/root")))?;
    husk_e2e::check(
        root == [
            "dev",
            "initramfs",
            "kernel",
            "proc",
            "run",
            "shared",
            "vm.json",
        ],
        || format!("husk-vmm's root holds {root:?}, not only its jail"),
    )?;
    let procs = names_in(&PathBuf::from(format!("/proc/{pid}/root/proc")))?;
    husk_e2e::check(
        procs
            .iter()
            .all(|n| ["1", "self", "thread-self"].contains(&n.as_str())),
        || format!("the jail's /proc shows more than husk-vmm itself (pid 1): {procs:?}"),
    )?;
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs =
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).map_err(|e| e.to_string())?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).map_err(|e| e.to_string())?;
        husk_e2e::check(theirs != ours, || {
            format!("husk-vmm shares the host's {ns} namespace ({ours:?})")
        })?;
    }
    let threads = statuses();
    let mut root_threads = Vec::new();
    for (comm, status) in &threads {
        let uids = status_field(status, "Uid:");
        let cap_eff = u64::from_str_radix(&status_field(status, "CapEff:"), 16).unwrap_or(u64::MAX);
        let cap_prm = u64::from_str_radix(&status_field(status, "CapPrm:"), 16).unwrap_or(u64::MAX);
        husk_e2e::check(status_field(status, "NoNewPrivs:") == "1", || {
            format!("thread {comm}: no no_new_privs")
        })?;
        if uids == "0\t0\t0\t0" || uids == "0 0 0 0" {
            root_threads.push(comm.clone());
            husk_e2e::check(
                cap_eff & !FS_WORKER_CAPS == 0 && cap_prm & !FS_WORKER_CAPS == 0,
                || {
                    format!("root thread {comm} keeps capabilities {cap_eff:#x} beyond the file-ownership ones")
                },
            )?;
        } else {
            let want = format!("{uid}\t{uid}\t{uid}\t{uid}");
            husk_e2e::check(uids == want, || {
                format!("thread {comm} runs as {uids:?}, not the sandbox's uid {uid}")
            })?;
            husk_e2e::check(cap_eff == 0 && cap_prm == 0, || {
                format!("thread {comm} keeps capabilities {cap_eff:#x}/{cap_prm:#x}")
            })?;
        }
    }
    husk_e2e::check(root_threads.len() == 1, || {
        format!(
            "want one uid-0 thread (virtio-fs), got {root_threads:?} of {:?}",
            threads.iter().map(|t| &t.0).collect::<Vec<_>>()
        )
    })?;
    // The attacks, from inside its mount namespace and root. Paths are in the jail.
    let canary =
        std::ffi::CString::new(canaries.victim_file.as_os_str().as_encoded_bytes()).unwrap();
    let etc = std::ffi::CString::new(canaries.etc_file.as_os_str().as_encoded_bytes()).unwrap();
    let state_marker =
        std::ffi::CString::new(state.join("husk-vmm.log").as_os_str().as_encoded_bytes()).unwrap();
    let as_root: Vec<(&std::ffi::CStr, bool)> = vec![
        (&canary, false),
        (&etc, false),
        (&state_marker, false),
        (c"/../../etc/passwd", false),
        (c"/proc/1/root/../etc/passwd", false),
        (c"/proc/sys/kernel/hostname", false),
        (c"/proc/sysrq-trigger", true),
        (c"/new-file-in-the-jail-root", true),
        (c"/kernel", true),
        (c"/shared/new-file", true),
    ];
    let reached = attack_from_inside(pid, None, &as_root)?;
    husk_e2e::check(reached == 0, || {
        let which: Vec<_> = as_root
            .iter()
            .enumerate()
            .filter(|(i, _)| reached & (1 << i) != 0)
            .map(|(_, a)| a.0)
            .collect();
        format!("from inside husk-vmm's jail, root reached {which:?} (exit {reached})")
    })?;
    // As the uid its threads run as: the run dir is its own (so the attack harness
    // works), and nothing else.
    let as_sandbox: Vec<(&std::ffi::CStr, bool)> = vec![
        (c"/run/made-by-the-vmm", true),
        (c"/shared/hello", false),
        (c"/vm.json", false),
        (c"/dev/kvm-new", true),
    ];
    let reached = attack_from_inside(pid, Some(uid), &as_sandbox)?;
    husk_e2e::check(reached == 0b011, || {
        format!("as uid {uid} inside the jail: want the run dir writable and the share readable only (0b011), got {reached:#b}")
    })?;
    husk_e2e::check(canaries.damage().is_empty(), || {
        format!("{:?}", canaries.damage())
    })?;
    drop(vmm);
    drop(lease);
    jail::remove(&state).map_err(|e| format!("remove the jail: {e}"))?;
    husk_e2e::check(!jail.dir().exists(), || "the jail is left".into())?;
    Ok(())
}

/// Kills and reaps a child on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Detaches a mount on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
